//! Removing recordings: one at a time (the API's DELETE) and, by age, the retention task.
//!
//! A recording is its directory `<recordings_dir>/<id>/` and its row. The directory goes
//! first: if removing it fails, the row stays, so the recording is still listed and the next
//! attempt finds it again, instead of leaving files that nothing points to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{self, Store, StoreError};

/// How often the retention task looks for expired recordings.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Why a recording could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("removing {0}: {1}")]
    Files(PathBuf, std::io::Error),
}

/// The directory of one recording, if `id` can name one. Anything but a 32-hex id could step
/// outside the recordings directory, so it names nothing.
pub fn recording_dir(recordings_dir: &Path, id: &str) -> Option<PathBuf> {
    store::is_id(id).then(|| recordings_dir.join(id))
}

/// Removes a recording's files, then its row. A directory that is already gone is fine (the
/// recorder may never have created it). [`StoreError::NotFound`] if there is no such row.
pub async fn remove_recording(
    store: &Store,
    recordings_dir: &Path,
    id: &str,
) -> Result<(), RemoveError> {
    let dir = recording_dir(recordings_dir, id).ok_or(StoreError::NotFound)?;
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(RemoveError::Files(dir, err)),
    }
    store.delete_recording(id).await?;
    Ok(())
}

/// Removes every recording that ended more than `retention_days` days before `now_ms`, and
/// answers how many went. `retention_days == 0` keeps everything. A recording that cannot be
/// removed is logged and left for the next pass, so that one bad directory does not stop the
/// others from going.
pub async fn delete_expired(
    store: &Store,
    recordings_dir: &Path,
    retention_days: u32,
    now_ms: i64,
) -> Result<usize, StoreError> {
    if retention_days == 0 {
        return Ok(0);
    }
    let cutoff = now_ms.saturating_sub(i64::from(retention_days).saturating_mul(DAY_MS));
    let mut removed = 0;
    for row in store.recordings_older_than(cutoff).await? {
        match remove_recording(store, recordings_dir, &row.id).await {
            Ok(()) => {
                tracing::info!(recording = %row.id, room = %row.meeting_id, "recording expired and was removed");
                removed += 1;
            }
            // Removed meanwhile by someone else: nothing left to do.
            Err(RemoveError::Store(StoreError::NotFound)) => {}
            Err(err) => {
                tracing::warn!(recording = %row.id, %err, "an expired recording could not be removed");
            }
        }
    }
    Ok(removed)
}

/// Starts the retention task: a pass now, then one every [`RETENTION_INTERVAL`]. None when
/// recordings are kept forever.
pub fn spawn(
    store: Store,
    recordings_dir: PathBuf,
    retention_days: u32,
) -> Option<tokio::task::JoinHandle<()>> {
    if retention_days == 0 {
        tracing::info!("recordings are kept until deleted (no retention period)");
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RETENTION_INTERVAL);
        // A pass that was missed (the machine slept) is not worth repeating in a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) =
                delete_expired(&store, &recordings_dir, retention_days, store::unix_ms()).await
            {
                tracing::warn!(%err, "the recording retention pass failed");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::stores;
    use crate::store::{RecordingStatus, new_id};

    #[tokio::test]
    async fn only_recordings_past_the_retention_period_are_removed() {
        for t in stores().await {
            let store = &t.store;
            let dir = std::env::temp_dir().join(format!("meet-retention-{}", new_id()));
            let now = 1_800_000_000_000;
            let old = new_id();
            let recent = new_id();
            let running = new_id();
            let missing_dir = new_id();
            for (id, started, ended) in [
                (&old, now - 100 * DAY_MS, Some(now - 91 * DAY_MS)),
                (&recent, now - 10 * DAY_MS, Some(now - 10 * DAY_MS)),
                (&running, now - 200 * DAY_MS, None),
                (&missing_dir, now - 300 * DAY_MS, Some(now - 299 * DAY_MS)),
            ] {
                store
                    .create_recording(id, "room", started, None, false)
                    .await
                    .expect("create");
                if let Some(ended) = ended {
                    store
                        .finish_recording(id, RecordingStatus::Completed, ended, None, 3)
                        .await
                        .expect("finish");
                }
                if id != &missing_dir {
                    std::fs::create_dir_all(dir.join(id)).expect("directory");
                    std::fs::write(dir.join(id).join("mix.ogg"), b"abc").expect("file");
                }
            }

            // Keeping forever removes nothing.
            assert_eq!(delete_expired(store, &dir, 0, now).await.expect("pass"), 0);
            assert_eq!(delete_expired(store, &dir, 90, now).await.expect("pass"), 2);
            assert!(!dir.join(&old).exists());
            assert_eq!(store.recording(&old).await.expect("query"), None);
            assert_eq!(store.recording(&missing_dir).await.expect("query"), None);
            for kept in [&recent, &running] {
                assert!(dir.join(kept).join("mix.ogg").exists());
                assert!(store.recording(kept).await.expect("query").is_some());
            }
            // A second pass finds nothing more.
            assert_eq!(delete_expired(store, &dir, 90, now).await.expect("pass"), 0);
            let _ = std::fs::remove_dir_all(&dir);
            t.finish().await;
        }
    }

    #[test]
    fn only_ids_name_directories() {
        let base = Path::new("/rec");
        assert!(recording_dir(base, "../etc").is_none());
        assert!(recording_dir(base, &"A".repeat(32)).is_none());
        assert_eq!(
            recording_dir(base, &"a".repeat(32)),
            Some(base.join("a".repeat(32)))
        );
    }
}

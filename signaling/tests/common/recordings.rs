//! A recording's files and row, as the tests that record meetings read them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use signaling::store::{RecordingStatus, Store};

/// Where the server whose data directory is `data_dir` writes recording `id`.
pub fn recording_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("recordings").join(id)
}

/// A recording's `manifest.json`.
pub fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// The id of the first recording of `meeting`, once registered.
pub async fn recording_id(store: &Store, meeting: &str) -> String {
    for _ in 0..100 {
        if let Some(row) = store.recordings(meeting).await.expect("list").first() {
            return row.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no recording registered for {meeting}");
}

/// Waits until recording `id` has `status`.
pub async fn wait_status(store: &Store, id: &str, status: RecordingStatus) {
    for _ in 0..200 {
        if store
            .recording(id)
            .await
            .expect("lookup")
            .is_some_and(|r| r.status == status)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("recording {id} never became {status:?}");
}

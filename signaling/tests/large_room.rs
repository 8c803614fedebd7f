//! Large-audience signaling: viewers are not announced to each other, so a viewer joining a
//! room of hundreds costs the other viewers nothing but the coalesced counts.

mod common;

use std::time::{Duration, Instant};

use common::{RawClient, Received};
use protocol::{RoomCounts, ServerMessage};

const VIEWERS: usize = 300;

/// Messages a client received about other participants, and its aggregate counts.
#[derive(Debug, Default)]
struct Seen {
    presence: u64,
    counts_messages: u64,
    last_counts: Option<RoomCounts>,
}

impl Seen {
    fn take(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::ParticipantJoined { .. }
            | ServerMessage::ParticipantLeft { .. }
            | ServerMessage::ParticipantUpdated { .. } => self.presence += 1,
            ServerMessage::RoomCounts(counts) => {
                self.counts_messages += 1;
                self.last_counts = Some(counts);
            }
            _ => {}
        }
    }
}

async fn drain(client: &mut RawClient, seen: &mut Seen) {
    while let Some(received) = client.next_within(Duration::from_millis(2)).await {
        match received {
            Received::Message(message) => seen.take(message),
            Received::Closed(code) => panic!("a viewer was disconnected ({code:?})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewers_get_counts_not_each_other() {
    // Every viewer comes from 127.0.0.1, as a load test's bots do.
    let t = common::start("large-room", |c| c.max_connections_per_ip = None).await;
    let mut presenter = t.raw().await;
    let ServerMessage::Joined { .. } = presenter
        .join_as("national", "Trung ương", "presenter")
        .await
    else {
        unreachable!("join_as returns joined");
    };
    let started = Instant::now();
    let mut viewers = Vec::with_capacity(VIEWERS);
    for i in 0..VIEWERS {
        let mut viewer = t.raw().await;
        let ServerMessage::Joined { participants, .. } = viewer
            .join_as("national", &format!("Xã {i}"), "viewer")
            .await
        else {
            unreachable!("join_as returns joined");
        };
        // A viewer sees the presenter, never the viewers before it.
        assert_eq!(
            participants.len(),
            1,
            "viewer {i} was sent {participants:?}"
        );
        viewers.push((viewer, Seen::default()));
    }

    // Wait until every viewer has been told the final counts: counts reach everyone.
    let full = |c: &Option<RoomCounts>| {
        c.is_some_and(|c| c.present as usize == VIEWERS + 1 && c.viewers as usize == VIEWERS)
    };
    let mut presenter_seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        drain(&mut presenter, &mut presenter_seen).await;
        for (viewer, seen) in &mut viewers {
            drain(viewer, seen).await;
        }
        let done = full(&presenter_seen.last_counts)
            && viewers.iter().all(|(_, seen)| full(&seen.last_counts));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts never reached everyone: presenter {presenter_seen:?}"
        );
    }
    let elapsed = started.elapsed().as_secs();

    // Nobody heard about the viewers one by one...
    assert_eq!(
        presenter_seen.presence, 0,
        "the presenter was told of viewers"
    );
    for (i, (_, seen)) in viewers.iter().enumerate() {
        assert_eq!(seen.presence, 0, "viewer {i} was told of other viewers");
        // ...and counts come at most once a second, whatever the number of joins.
        assert!(
            seen.counts_messages <= elapsed + 2,
            "viewer {i} got {} counts messages in {elapsed} s",
            seen.counts_messages
        );
    }
    let total: u64 = viewers.iter().map(|(_, s)| s.counts_messages).sum();
    println!(
        "{VIEWERS} viewers joined in {elapsed} s; each received on average {:.2} counts messages \
         and 0 presence messages ({:.4} per join)",
        total as f64 / VIEWERS as f64,
        total as f64 / (VIEWERS * VIEWERS) as f64
    );
}

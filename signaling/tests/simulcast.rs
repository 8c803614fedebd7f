//! Simulcast and active speaker through the real server: str0m bots publish three layers and
//! claim audio levels; the hub relays the SFU's `simulcast_layers` and `active_speaker`.

mod common;

use common::{MEDIA_TIMEOUT, eventually};
use loadtest::bot::Bot;
use protocol::MediaKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_follow_tile_sizes_and_the_loud_voice_is_announced() {
    let t = common::start("simulcast", |_| {}).await;
    let mut options = t.bot_options("r", "presenter", 440.0, 0xA);
    options.endpoint.simulcast_frame_bytes = vec![400, 1_200, 3_000];
    options.endpoint.audio_level = -10;
    let presenter = Bot::connect(options).await.expect("presenter joins");
    let mut options = t.bot_options("r", "listener", 660.0, 0xB);
    options.endpoint.audio_level = -90;
    let listener = Bot::connect(options).await.expect("listener joins");
    let p = presenter.participant_id();

    // Both are told who speaks: the presenter's level is loud, the listener's is not.
    eventually(MEDIA_TIMEOUT, "everyone learns who speaks", || {
        [&presenter, &listener]
            .iter()
            .all(|bot| bot.snapshot().roster.active_speakers.last() == Some(&Some(p)))
    })
    .await;

    let video = listener
        .snapshot()
        .roster
        .participants
        .get(&p)
        .and_then(|info| {
            info.publications
                .iter()
                .find(|x| x.kind == MediaKind::Video)
        })
        .map(|x| x.id)
        .expect("the presenter's video");
    // Without a reported size the listener gets the top layer.
    eventually(MEDIA_TIMEOUT, "the listener receives the top layer", || {
        listener
            .snapshot()
            .received
            .get(&video)
            .is_some_and(|r| r.video_layer == Some(2) && r.video_tag == Some(0xA))
    })
    .await;

    // A small tile: the listener moves to the low layer and the presenter is told to pause
    // the two others, which it does.
    listener
        .send(protocol::ClientMessage::VideoSizes {
            sizes: vec![protocol::VideoSize {
                publication_id: video,
                width: 320,
                height: 180,
            }],
        })
        .expect("sizes sent");
    eventually(
        MEDIA_TIMEOUT,
        "the low layer and paused upper layers",
        || {
            let on_low = listener
                .snapshot()
                .received
                .get(&video)
                .is_some_and(|r| r.video_layer == Some(0));
            let told = presenter
                .snapshot()
                .roster
                .simulcast_layers
                .get(&video)
                .cloned();
            on_low && told == Some(vec![true, false, false])
        },
    )
    .await;
    for bot in [&presenter, &listener] {
        let errors = bot.snapshot().errors;
        assert!(errors.is_empty(), "{errors:?}");
    }
}

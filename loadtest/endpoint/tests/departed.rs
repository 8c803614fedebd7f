//! A departed receiver cannot decrypt what a sender seals after the bound docs/e2ee.md states,
//! even when it keeps its keys and still gets the packets. The sender, the receivers and the
//! SFU are the real ones (`sfu::Engine` through the SFU's virtual-time harness); the key
//! exchange is the browser's (`endpoint::keys`, `KeyPolicy::BROWSER`), its messages passed
//! between the parties as the server's relay would, and the departures told to the sender as
//! the server tells them. The departed stay connected to the SFU, so that every packet they
//! would have had reaches them: only their keys stand between them and the media.

#[path = "../../../sfu/tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use endpoint::keys::{DeviceKey, KeyEvent, KeyExchange, KeyPolicy};
use endpoint::{E2eeConfig, EndpointConfig};
use protocol::{ClientMessage, ParticipantId};
use sim::Sim;

const POLICY: KeyPolicy = KeyPolicy::BROWSER;

/// One party: its sim endpoint and its side of the key exchange. A departed party keeps both,
/// but the relay no longer carries anything to or from it.
struct Party {
    index: usize,
    keys: KeyExchange,
    departed_at: Option<Instant>,
}

struct World {
    sim: Sim,
    parties: Vec<Party>,
}

impl World {
    fn participant(&self, party: usize) -> ParticipantId {
        self.sim.endpoints[self.parties[party].index].participant
    }

    fn join(&mut self, publishes: bool) -> usize {
        let index = self.sim.join("r", |c: &mut EndpointConfig| {
            c.publish_audio = publishes;
            c.publish_video = publishes;
            c.e2ee = Some(E2eeConfig::exchanged());
        });
        let participant = self.sim.endpoints[index].participant;
        let mut keys = KeyExchange::new(DeviceKey::generate().expect("device key"), POLICY);
        keys.joined("r", participant);
        if publishes {
            keys.start_sending().expect("a sender key");
        } else {
            // Receivers see the presenter (party 0) and ask it for its key.
            let presenter = self.participant(0);
            let public = self.parties[0].keys.public_key().to_string();
            keys.want(self.sim.now, presenter, Some(&public));
        }
        self.parties.push(Party {
            index,
            keys,
            departed_at: None,
        });
        self.relay();
        self.parties.len() - 1
    }

    /// `party` leaves the meeting as far as keys go: the server stops relaying to it and tells
    /// the presenter. Its media transport stays: it is the packets it should no longer read.
    fn depart(&mut self, party: usize) {
        let now = self.sim.now;
        let participant = self.participant(party);
        self.parties[party].departed_at = Some(now);
        self.parties[0]
            .keys
            .participant_left(now, participant)
            .expect("departure");
        self.relay();
    }

    /// Moves time on in small steps, waking the key exchanges as their driver would.
    fn run_for(&mut self, duration: Duration) {
        let end = self.sim.now + duration;
        while self.sim.now < end {
            self.sim.run_for(Duration::from_millis(5));
            let now = self.sim.now;
            for party in &mut self.parties {
                party.keys.handle_timeout(now).expect("key timers");
            }
            self.relay();
        }
    }

    /// Carries the key messages (as the server's relay: only between those present; the
    /// presenter is shown to everyone, viewers to no one) and installs the keys.
    fn relay(&mut self) {
        loop {
            let mut mail = Vec::new();
            for (from, party) in self.parties.iter_mut().enumerate() {
                while let Some(message) = party.keys.poll_message() {
                    let ClientMessage::E2eeKeys { keys } = message else {
                        continue;
                    };
                    if party.departed_at.is_none() {
                        mail.extend(keys.into_iter().map(|k| (from, k)));
                    }
                }
                let endpoint = &mut self.sim.endpoints[party.index].endpoint;
                while let Some(event) = party.keys.poll_event() {
                    match event {
                        KeyEvent::SendWith { kid, base } => {
                            endpoint.set_send_key(kid, &base).expect("publishes");
                        }
                        KeyEvent::Received { sender, kid, base } => {
                            endpoint.add_receive_key(sender, kid, &base);
                        }
                        KeyEvent::Forget { sender } => endpoint.forget_sender(sender),
                    }
                }
            }
            if mail.is_empty() {
                return;
            }
            let now = self.sim.now;
            let presenter_public = self.parties[0].keys.public_key().to_string();
            for (from, delivery) in mail {
                let sender = self.participant(from);
                let Some(to) = (0..self.parties.len())
                    .find(|p| self.participant(*p) == delivery.participant_id)
                    .filter(|p| self.parties[*p].departed_at.is_none())
                else {
                    continue;
                };
                let shown = (from == 0).then_some(presenter_public.as_str());
                // What does not open is counted by the exchange, as the relay cannot tell.
                let _ = self.parties[to]
                    .keys
                    .handle_blob(now, sender, shown, &delivery.blob);
            }
        }
    }

    /// Frames `party` opened from the presenter, and the newest epoch among them.
    fn opened(&self, party: usize) -> (u64, Option<u64>) {
        let endpoint = &self.sim.endpoints[self.parties[party].index].endpoint;
        let presenter = self.participant(0);
        let frames = endpoint
            .stats()
            .values()
            .filter(|s| s.participant_id == presenter)
            .map(|s| s.frames_decrypted)
            .sum();
        let epoch = endpoint
            .epochs_opened()
            .get(&presenter)
            .and_then(|epochs| epochs.iter().map(|(e, _)| *e).max());
        (frames, epoch)
    }
}

/// The longest a sender keeps sealing under a key a departed receiver holds, once told of the
/// departure (in virtual time wrapping takes none): its wait before the new key (the interval,
/// or a burst's wait), then the new key's delay.
fn bound() -> Duration {
    POLICY.rekey_interval.max(POLICY.rekey_after_departure) + POLICY.rekey_delay
}

#[test]
fn a_departed_receiver_with_its_keys_and_the_packets_decrypts_nothing_past_the_bound() {
    let mut w = World {
        sim: Sim::new(),
        parties: Vec::new(),
    };
    let presenter = w.join(true);
    let stays = w.join(false);
    let first = w.join(false);
    let second = w.join(false);
    w.run_for(Duration::from_secs(3));
    for party in [stays, first, second] {
        let (frames, epoch) = w.opened(party);
        assert!(
            frames > 50 && epoch == Some(0),
            "{party}: {frames} {epoch:?}"
        );
    }

    // The first leaves: the presenter makes a new key soon, which the second still gets.
    w.depart(first);
    w.run_for(Duration::from_millis(300));
    let rekeys = |w: &World| {
        w.parties[presenter]
            .keys
            .rekeys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(rekeys(&w).len(), 1);
    // The second leaves just after that new key was made: the longest wait for the next.
    w.depart(second);
    let mut opened_at_bound = [None, None];
    let started = w.sim.now;
    while w.sim.now.duration_since(started) < Duration::from_secs(8) {
        w.run_for(Duration::from_millis(50));
        for (slot, party) in [first, second].into_iter().enumerate() {
            let departed_at = w.parties[party].departed_at.expect("departed");
            // Frames still in flight at the bound (the SFU's and the network's few ms, a
            // video frame's reassembly) may open just after it; none sealed later does.
            if opened_at_bound[slot].is_none()
                && w.sim.now >= departed_at + bound() + Duration::from_millis(100)
            {
                opened_at_bound[slot] = Some(w.opened(party));
            }
        }
    }

    // Each departure was answered by a new key that the departed never received, used
    // within the bound of its departure.
    let rekeys = rekeys(&w);
    assert_eq!(rekeys.len(), 2, "{rekeys:?}");
    for (party, rekey) in [(first, &rekeys[0]), (second, &rekeys[1])] {
        let departed_at = w.parties[party].departed_at.expect("departed");
        assert_eq!(rekey.covers, vec![w.participant(party)]);
        let used = rekey.used_at.expect("in use");
        assert!(used <= departed_at + bound(), "{rekey:?}");
    }
    let newest = u64::from(rekeys[1].epoch);
    for (slot, party) in [first, second].into_iter().enumerate() {
        let (frames, epoch) = w.opened(party);
        // The packets kept coming, and nothing opened after the bound...
        assert_eq!(Some((frames, epoch)), opened_at_bound[slot], "{party}");
        // ...nor under the newest key, which it never held.
        assert!(epoch < Some(newest), "{party}: {epoch:?}");
        let endpoint = &w.sim.endpoints[w.parties[party].index].endpoint;
        let presenter_id = w.participant(presenter);
        let failed: u64 = endpoint
            .stats()
            .values()
            .filter(|s| s.participant_id == presenter_id)
            .map(|s| s.decrypt_failures)
            .sum();
        assert!(failed > 100, "{party} kept receiving the packets: {failed}");
    }
    // The one who stayed followed every new key and lost no frame to them.
    let (_, epoch) = w.opened(stays);
    assert_eq!(epoch, Some(newest));
    let endpoint = &w.sim.endpoints[w.parties[stays].index].endpoint;
    let lost: u64 = endpoint
        .stats()
        .values()
        .map(|s| s.decrypt_failures_newer_key)
        .sum();
    assert_eq!(lost, 0);
}

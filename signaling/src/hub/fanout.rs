//! Fan-out: every message the hub sends goes through here. A message for many is serialized
//! once and shared; a recipient too slow for the room's own messages is removed rather than
//! slowing the room; a member's wrapped keys for another are queued only within that pair's
//! rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::{ErrorCode, LeaveReason, ParticipantId, Role, RoomCounts, RoomId, ServerMessage};
use tokio::sync::mpsc;

use super::moderation::within_limit;
use super::{
    Hub, Member, Outbound, RELAY_PER_SENDER_BURST, RELAY_PER_SENDER_RATE, RELAY_QUEUE_ROOM, Room,
    sees,
};

/// What the key relay carried, for `/metrics` (process-wide, like the refusal counters:
/// several servers in one test process share them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRelayTotals {
    /// `e2ee_keys` messages taken in, the deliveries they named and their blobs' characters.
    pub messages_in: u64,
    pub deliveries_in: u64,
    pub blob_bytes_in: u64,
    /// `e2ee_key` messages queued for recipients, and their bytes (the JSON text).
    pub messages_out: u64,
    pub bytes_out: u64,
}

static KEY_RELAY: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The key relay's totals so far.
pub fn key_relay_totals() -> KeyRelayTotals {
    let at = |i: usize| KEY_RELAY[i].load(Ordering::Relaxed);
    KeyRelayTotals {
        messages_in: at(0),
        deliveries_in: at(1),
        blob_bytes_in: at(2),
        messages_out: at(3),
        bytes_out: at(4),
    }
}

fn count_key_relay(index: usize, by: u64) {
    KEY_RELAY[index].fetch_add(by, Ordering::Relaxed);
}

impl Hub {
    pub(super) fn send(&mut self, participant: ParticipantId, message: &ServerMessage) {
        self.send_text(participant, encode(message));
    }

    pub(super) fn send_text(&mut self, participant: ParticipantId, message: Arc<str>) {
        let Some(member) = self.members.get(&participant) else {
            return;
        };
        if too_slow_for(&member.outbound, &message) {
            self.remove(participant, LeaveReason::Removed, None);
        }
    }

    /// Sends one message about a participant in role `subject` to every admitted member of the
    /// room who sees that role, but `except`. A member whose queue is full is too slow to
    /// follow the room and is removed rather than slowing everyone down.
    pub(super) fn broadcast_about(
        &mut self,
        room: &RoomId,
        subject: Role,
        except: Option<ParticipantId>,
        message: &Arc<str>,
    ) {
        self.broadcast_where(room, except, message, |role| sees(role, subject));
    }

    /// Sends one message to every admitted member of the room.
    pub(super) fn broadcast_all(&mut self, room: &RoomId, message: &Arc<str>) {
        self.broadcast_where(room, None, message, |_| true);
    }

    pub(super) fn broadcast_where(
        &mut self,
        room: &RoomId,
        except: Option<ParticipantId>,
        message: &Arc<str>,
        wanted: impl Fn(Role) -> bool,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut too_slow = Vec::new();
        for id in &r.admitted {
            if Some(*id) == except {
                continue;
            }
            if let Some(member) = self.members.get(id)
                && wanted(member.role)
                && too_slow_for(&member.outbound, message)
            {
                too_slow.push(*id);
            }
        }
        for id in too_slow {
            self.remove(id, LeaveReason::Removed, None);
        }
    }

    /// Relays wrapped media keys to their recipients in the sender's room. The server cannot
    /// read them; it only vouches for who sent them. A recipient who left meanwhile, or who is
    /// not in this room, is skipped: keys never cross rooms.
    pub(super) fn relay_e2ee_keys(
        &mut self,
        from: ParticipantId,
        room: &RoomId,
        keys: Vec<protocol::E2eeKeyDelivery>,
    ) -> Result<(), (ErrorCode, String)> {
        within_limit("keys", keys.len(), protocol::MAX_E2EE_DELIVERIES)?;
        if let Some(key) = keys.iter().find(|k| k.blob.len() > protocol::MAX_E2EE_BLOB) {
            return Err((
                ErrorCode::BadMessage,
                format!(
                    "a key for {} is {} characters; the limit is {}",
                    key.participant_id,
                    key.blob.len(),
                    protocol::MAX_E2EE_BLOB
                ),
            ));
        }
        count_key_relay(0, 1);
        count_key_relay(1, keys.len() as u64);
        count_key_relay(2, keys.iter().map(|k| k.blob.len() as u64).sum());
        let now = std::time::Instant::now();
        let mut held_back = Vec::new();
        for key in keys {
            let recipient = key.participant_id;
            let Some(member) = self.members.get_mut(&recipient) else {
                continue;
            };
            if recipient == from || !member.admitted || member.room != *room {
                continue;
            }
            let within_budget = member
                .relayed_from
                .entry(from)
                .or_insert_with(|| {
                    crate::session::RateLimiter::new(RELAY_PER_SENDER_RATE, RELAY_PER_SENDER_BURST)
                })
                .allow(now);
            // Never removes the recipient: a message that would crowd its queue is the
            // sender's problem, refused to the sender.
            let message = encode(&ServerMessage::E2eeKey {
                from,
                blob: key.blob,
            });
            let bytes = message.len() as u64;
            let queued = within_budget
                && member.outbound.capacity() > RELAY_QUEUE_ROOM
                && member.outbound.try_send(Outbound::Text(message)).is_ok();
            if queued {
                count_key_relay(3, 1);
                count_key_relay(4, bytes);
            } else {
                held_back.push(recipient);
            }
        }
        if held_back.is_empty() {
            return Ok(());
        }
        if crate::metrics::Refusal::RelayHeldBack.count() {
            tracing::info!(participant = %from, recipients = ?held_back, "key messages held back");
        }
        Err((
            ErrorCode::RateLimited,
            format!(
                "keys for {} not relayed: too many for them lately, or they are not keeping \
                 up; send them again later",
                held_back
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

pub(super) fn encode(message: &ServerMessage) -> Arc<str> {
    // Serializing these plain data types cannot fail; an empty object would only be ignored
    // by the client.
    serde_json::to_string(message)
        .unwrap_or_else(|_| "{}".to_string())
        .into()
}

/// Queues a message; true when the member's queue is full, so it is too slow to follow the
/// room. A closed queue is not that: its session has ended and its own leave, with the real
/// reason, is on the way to the hub, which must not overtake it with "removed".
pub(super) fn too_slow_for(outbound: &mpsc::Sender<Outbound>, message: &Arc<str>) -> bool {
    matches!(
        outbound.try_send(Outbound::Text(message.clone())),
        Err(mpsc::error::TrySendError::Full(_))
    )
}

pub(super) fn counts_of(room: &Room, members: &HashMap<ParticipantId, Member>) -> RoomCounts {
    let mut counts = RoomCounts {
        present: room.admitted.len() as u32,
        lobby: room.lobby.len() as u32,
        ..RoomCounts::default()
    };
    for member in room.admitted.iter().filter_map(|p| members.get(p)) {
        if member.role == Role::Viewer {
            counts.viewers += 1;
        }
        if member.hand_raised {
            counts.hands_raised += 1;
        }
    }
    counts
}

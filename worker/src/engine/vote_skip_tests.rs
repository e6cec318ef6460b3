//! Vote skip: off by default, a share of the present members skips whatever the control
//! mode, one vote per member per entry, and departures count.

use lockstep_shared::bus::ConnId;
use lockstep_shared::protocol::ClientCommand;
use serde_json::Value;

use super::tests::{code, Harness, ROOM};

fn vote() -> ClientCommand {
    ClientCommand::PlayerVoteSkip { room: ROOM.into() }
}

fn set_percent(h: &mut Harness, percent: u8) -> Value {
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: None,
            ad_policy: None,
            name: None,
            vote_skip_percent: Some(percent),
        },
    )
}

fn current(h: &Harness) -> Option<u64> {
    h.room.durable().current.as_ref().map(|e| e.entry_id)
}

/// A room of the owner and `n` participants, two entries loaded (the first playing).
fn room_of(n: u64) -> Harness {
    let mut h = Harness::new();
    for i in 0..n {
        h.join(&format!("p{i}"), 10 + i);
    }
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h
}

#[test]
fn vote_skip_is_off_until_the_owner_turns_it_on() {
    let mut h = room_of(1);
    let off = h.run("p0", 10, vote());
    assert_eq!(code(&off), "conflict", "{off}");
    assert_eq!(code(&set_percent(&mut h, 101)), "bad_request");
    assert_eq!(code(&set_percent(&mut h, 50)), "ack");
    assert_eq!(
        h.last_event("room.settings")["settings"]["vote_skip_percent"],
        50
    );
}

#[test]
fn enough_votes_skip_whatever_the_control_mode() {
    // Owner + 3 participants at 50 %: 2 votes of 4 present skip.
    let mut h = room_of(3);
    set_percent(&mut h, 50);
    let first = current(&h);
    // Participants may not skip under the default control mode...
    let skip = h.run("p0", 10, ClientCommand::PlayerSkip { room: ROOM.into() });
    assert_eq!(code(&skip), "forbidden");
    // ...but they may vote.
    let r = h.run("p0", 10, vote());
    assert_eq!(
        r["result"],
        serde_json::json!({"votes": 1, "needed": 2, "skipped": false})
    );
    let tally = h.last_event("player.vote_skip");
    assert_eq!(
        (tally["votes"].as_u64(), tally["needed"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(tally["entry_id"].as_u64(), first);
    // A second vote by the same member changes nothing.
    let again = h.run("p0", 10, vote());
    assert_eq!(again["result"]["votes"], 1);
    let r = h.run("p1", 11, vote());
    assert_eq!(r["result"]["skipped"], true);
    assert_ne!(current(&h), first);
    // The new entry starts with no votes.
    let r = h.run("p0", 10, vote());
    assert_eq!(r["result"]["votes"], 1);
}

#[test]
fn a_voter_leaving_takes_the_vote_and_a_leaver_can_tip_the_balance() {
    // Owner + 4 participants at 60 %: needed = ceil(5 * 0.6) = 3.
    let mut h = room_of(4);
    set_percent(&mut h, 60);
    let first = current(&h);
    h.run("p0", 10, vote());
    h.run("p1", 11, vote());
    assert_eq!(current(&h), first);
    // p0 leaves: 1 vote of 4 present, needed 3.
    h.room.handle(
        h.now,
        lockstep_shared::bus::ToWorker::ConnClosed {
            room: ROOM.into(),
            conn: ConnId {
                gateway: 1,
                local: 10,
            },
            user_id: "p0".into(),
        },
    );
    let r = h.run("p2", 12, vote());
    assert_eq!(
        r["result"],
        serde_json::json!({"votes": 2, "needed": 3, "skipped": false})
    );
    // Two non-voters leave: 2 votes of 2 present (needed 2): skipped by the departure.
    for (user, local) in [("p3", 13), ("owner", 1)] {
        h.room.handle(
            h.now,
            lockstep_shared::bus::ToWorker::ConnClosed {
                room: ROOM.into(),
                conn: ConnId { gateway: 1, local },
                user_id: user.into(),
            },
        );
    }
    assert_ne!(current(&h), first);
}

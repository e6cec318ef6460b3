//! Tens of thousands of random and mutated frames through the decoder and the engine:
//! nothing panics, every reply is a well-formed ack or error, and the room's invariants
//! (seq strictly +1, position never negative, queue bound) hold throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, ToGateway, ToWorker};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::decode_client_frame;
use lockstep_worker::engine::Room;
use serde_json::Value;

const ITERATIONS: usize = 60_000;

/// Deterministic xorshift so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TEMPLATES: &[&str] = &[
    r#"{"id":"a","type":"room.join","room":"r1","since_seq":3}"#,
    r#"{"type":"room.leave","room":"r1"}"#,
    r#"{"id":"b","type":"user.ready","room":"r1","ready":true}"#,
    r#"{"type":"player.play","room":"r1"}"#,
    r#"{"type":"player.pause","room":"r1"}"#,
    r#"{"id":"c","type":"player.seek","room":"r1","position_ms":12000,"play":true}"#,
    r#"{"type":"player.restart","room":"r1"}"#,
    r#"{"type":"player.skip","room":"r1"}"#,
    r#"{"type":"player.ended","room":"r1","entry_id":1}"#,
    r#"{"type":"player.ad","room":"r1","active":true}"#,
    r#"{"id":"d","type":"queue.add","room":"r1","url":"https://youtu.be/dQw4w9WgXcQ","title":"t"}"#,
    r#"{"type":"queue.remove","room":"r1","entry_id":2}"#,
    r#"{"type":"queue.move","room":"r1","entry_id":3,"index":0}"#,
    r#"{"type":"queue.shuffle","room":"r1"}"#,
    r#"{"type":"queue.clear","room":"r1"}"#,
    r#"{"id":"e","type":"chat.send","room":"r1","text":"hello there"}"#,
    r#"{"type":"room.settings","room":"r1","control_mode":"anyone","ad_policy":"pause_all","name":"n"}"#,
    r#"{"type":"room.role","room":"r1","user_id":"u2","role":"operator"}"#,
    r#"{"type":"room.sources","room":"r1","add":{"platform":"twitch","channel":"abc"}}"#,
    r#"{"type":"room.sources","room":"r1","remove":"s1"}"#,
    r#"{"type":"signal.send","room":"r1","to":"u2","payload":{"x":[1,2,{"y":null}]}}"#,
    r#"{"type":"time.sync","t0":1.5}"#,
    r#"{"id":"f","type":"room.ban","room":"r1","user_id":"u2","duration_ms":60000}"#,
    r#"{"type":"room.unban","room":"r1","user_id":"u2"}"#,
    r#"{"type":"room.mute","room":"r1","user_id":"u3"}"#,
    r#"{"type":"room.unmute","room":"r1","user_id":"u3"}"#,
    r#"{"id":"g","type":"chat.delete","room":"r1","message_id":4}"#,
    r#"{"type":"player.vote_skip","room":"r1"}"#,
    r#"{"type":"room.settings","room":"r1","vote_skip_percent":50}"#,
];

const NOISE: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "-1",
    "1e309",
    "18446744073709551616",
    "\u{0}",
    "é",
    "\u{10FFFF}",
    "\\u0000",
    "\\",
    "\"room\":\"r1\"",
    "\"type\":",
    " ",
    "NaN",
];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !s.is_empty() => {
                let i = rng.below(s.len());
                s.remove(i);
            }
            1 => {
                let i = rng.below(s.len() + 1);
                for (k, c) in NOISE[rng.below(NOISE.len())].chars().enumerate() {
                    s.insert(i + k, c);
                }
            }
            2 if !s.is_empty() => {
                let i = rng.below(s.len());
                s[i] = char::from_u32((rng.next() % 0x2FFF) as u32).unwrap_or('x');
            }
            3 => {
                let cut = rng.below(s.len() + 1);
                s.truncate(cut);
            }
            4 => {
                // Swap a value for another JSON type.
                let text: String = s.iter().collect();
                let swapped = text
                    .replacen("true", "\"true\"", 1)
                    .replacen("12000", "-12000", 1)
                    .replacen("\"r1\"", "7", 1);
                s = swapped.chars().collect();
            }
            _ => {
                let i = rng.below(s.len() + 1);
                let len = rng.below(40);
                for k in 0..len {
                    s.insert(i + k, (b' ' + (rng.next() % 94) as u8) as char);
                }
            }
        }
    }
    s.into_iter().collect()
}

fn caller(i: usize) -> Caller {
    let user = if i == 0 {
        "owner".to_string()
    } else {
        format!("u{i}")
    };
    Caller {
        user_id: user.clone(),
        name: user,
        conn: ConnId {
            gateway: 1,
            local: i as u64,
        },
    }
}

#[test]
fn random_and_mutated_frames_never_break_the_room() {
    let cfg = RoomConfig {
        queue_max: 20,
        chat_rate: 1_000.0,
        chat_burst: 1_000.0,
        ..Default::default()
    };
    let (mut room, _) = Room::create(cfg, "r1", "owner", 0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut now = 1_000u64;
    let mut last_seq = room.seq();
    let (mut decoded, mut rejected) = (0usize, 0usize);
    for i in 0..4 {
        let join = decode_client_frame(r#"{"type":"room.join","room":"r1"}"#).unwrap();
        let out = room.handle(
            now,
            ToWorker::Command(CommandEnvelope {
                caller: caller(i),
                id: None,
                cmd: join.cmd,
            }),
        );
        last_seq += out
            .deliveries
            .iter()
            .filter(|d| matches!(d, ToGateway::RoomEvent { .. }))
            .count() as u64;
    }
    for n in 0..ITERATIONS {
        let text = match rng.below(10) {
            0 => (0..rng.below(64))
                .map(|_| (rng.next() % 256) as u8 as char)
                .collect(),
            1..=3 => TEMPLATES[rng.below(TEMPLATES.len())].to_owned(),
            _ => {
                let base = TEMPLATES[rng.below(TEMPLATES.len())];
                mutate(&mut rng, base)
            }
        };
        now += rng.below(2_000) as u64;
        let frame = match decode_client_frame(&text) {
            Ok(f) => f,
            Err(e) => {
                rejected += 1;
                assert!(!e.message.is_empty());
                continue;
            }
        };
        decoded += 1;
        if frame.cmd.room().is_none() {
            continue; // time.sync is the gateway's
        }
        let who = rng.below(5); // caller 4 never joined
        let env = CommandEnvelope {
            caller: caller(who),
            id: frame.id,
            cmd: frame.cmd,
        };
        let out = if n % 7 == 0 {
            room.tick(now)
        } else {
            room.handle(now, ToWorker::Command(env))
        };
        for d in &out.deliveries {
            match d {
                ToGateway::RoomEvent { seq, frame, .. } => {
                    assert_eq!(*seq, last_seq + 1, "seq strictly +1 (input {text})");
                    last_seq = *seq;
                    let v: Value = serde_json::from_str(frame).unwrap();
                    assert_eq!(v["seq"].as_u64(), Some(*seq));
                    if v["type"] == "player.state" {
                        assert!(
                            v["position_ms"].as_u64().is_some(),
                            "position never negative"
                        );
                    }
                }
                ToGateway::Reply { frames, .. } => {
                    let v: Value = serde_json::from_str(&frames[0]).unwrap();
                    assert!(v["type"] == "ack" || v["type"] == "error", "{v}");
                    if v["type"] == "error" {
                        assert!(v["code"].is_string());
                    }
                }
                _ => {}
            }
        }
        assert_eq!(room.seq(), last_seq);
        assert!(room.durable().queue.len() <= 20);
    }
    // The generator exercised both paths heavily.
    assert!(decoded > ITERATIONS / 4, "decoded {decoded}");
    assert!(rejected > ITERATIONS / 4, "rejected {rejected}");
}

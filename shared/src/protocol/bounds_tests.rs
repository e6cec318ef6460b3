use super::*;
use crate::protocol::decode_client_frame;

fn checked(text: &str) -> Result<(), Refusal> {
    match decode_client_frame(text) {
        Ok(frame) => check(&frame.cmd, 500),
        Err(e) => Err(Refusal::new(e.code, e.message)),
    }
}

fn code(text: &str) -> Option<ErrorCode> {
    checked(text).err().map(|r| r.code)
}

#[test]
fn commands_within_their_bounds_pass() {
    let longest_title = "t".repeat(MAX_TITLE_CHARS);
    let padded_name = format!("  {}  ", "n".repeat(MAX_ROOM_NAME_CHARS));
    let frames = [
        format!(
            r#"{{"type":"chat.send","room":"a","text":"{}"}}"#,
            "é".repeat(500)
        ),
        format!(
            r#"{{"type":"queue.add","room":"a","url":"https://youtu.be/dQw4w9WgXcQ","title":"{longest_title}"}}"#
        ),
        format!(r#"{{"type":"room.settings","room":"a","name":"{padded_name}"}}"#),
        format!(
            r#"{{"type":"room.role","room":"a","user_id":"{}","role":"operator"}}"#,
            "u".repeat(MAX_USER_ID_BYTES)
        ),
        r##"{"type":"room.sources","room":"a","add":{"platform":"twitch","channel":"#SomeChan"}}"##
            .into(),
        r#"{"type":"room.sources","room":"a","remove":"s12"}"#.into(),
        r#"{"type":"signal.send","room":"a","to":"guest-abc","payload":{}}"#.into(),
        r#"{"type":"player.play","room":"a"}"#.into(),
    ];
    for text in frames {
        assert_eq!(checked(&text), Ok(()), "{text}");
    }
}

#[test]
fn every_unbounded_string_field_has_a_refusal() {
    let long = "x".repeat(60 * 1024);
    let cases = [
        (
            format!(r#"{{"type":"chat.send","room":"a","text":"{long}"}}"#),
            ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"type":"queue.add","room":"a","url":"https://youtu.be/{long}"}}"#),
            ErrorCode::BadRequest,
        ),
        (
            format!(
                r#"{{"type":"queue.add","room":"a","url":"https://youtu.be/dQw4w9WgXcQ","title":"{long}"}}"#
            ),
            ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"type":"room.settings","room":"a","name":"{long}"}}"#),
            ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"type":"room.role","room":"a","user_id":"{long}","role":"operator"}}"#),
            ErrorCode::BadRequest,
        ),
        (
            format!(
                r#"{{"type":"room.sources","room":"a","add":{{"platform":"twitch","channel":"{long}"}}}}"#
            ),
            ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"type":"room.sources","room":"a","remove":"{long}"}}"#),
            ErrorCode::NotFound,
        ),
        (
            format!(r#"{{"type":"signal.send","room":"a","to":"{long}","payload":1}}"#),
            ErrorCode::BadRequest,
        ),
    ];
    for (text, want) in cases {
        assert_eq!(code(&text), Some(want), "{:.80}", text);
    }
}

#[test]
fn chat_is_counted_in_characters_and_must_not_be_blank() {
    assert_eq!(chat_text(&"é".repeat(10), 10), Ok(()));
    let over = chat_text(&"é".repeat(11), 10).err();
    assert_eq!(
        over.map(|r| r.message),
        Some("chat text is longer than 10 characters".into())
    );
    assert_eq!(
        chat_text(" \n\t", 10).err().map(|r| r.code),
        Some(ErrorCode::BadRequest)
    );
}

#[test]
fn role_targets_follow_the_user_id_rule() {
    assert!(is_valid_user_id("u1"));
    assert!(!is_valid_user_id(""));
    assert!(!is_valid_user_id(&"u".repeat(MAX_USER_ID_BYTES + 1)));
    assert!(!is_valid_user_id("a\nb"));
    assert!(role_target("a\u{7f}b").is_err());
}

#[test]
fn sources_are_normalized_and_checked() {
    let twitch = SourceSpec::Twitch {
        channel: "#SomeChan".into(),
        auth: None,
    };
    assert_eq!(
        twitch.normalized(),
        Ok(SourceSpec::Twitch {
            channel: "somechan".into(),
            auth: None
        })
    );
    let both = SourceSpec::Youtube {
        video_id: Some("dQw4w9WgXcQ".into()),
        channel_id: Some("UCxxxxxxxxxxxxxxxxxxxxxx".into()),
    };
    assert!(both.normalized().is_err());
    let spaced_token = SourceSpec::Twitch {
        channel: "chan".into(),
        auth: Some(TwitchAuth {
            login: "me".into(),
            token: "oauth:has space".into(),
        }),
    };
    assert!(spaced_token.normalized().is_err());
}

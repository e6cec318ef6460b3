//! The size rules of a command's fields, shared by the gateway and the room engine. The
//! gateway checks them before a command goes to the bus, so a command a client can make
//! cross the bus (or wait in a room's mailbox) is a few KiB at most, whatever the frame
//! limit; the engine checks them again because it is also driven without a gateway.
//! Both answer with the same codes and messages.

use super::client::ClientCommand;
use super::error::{ErrorCode, Refusal};
use super::model::{SourceSpec, TwitchAuth};

/// Longest `queue.add` URL, in bytes: anything longer is not a link a person pasted.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest entry title, in characters (after trimming).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest room name, in characters (after trimming).
pub const MAX_ROOM_NAME_CHARS: usize = 100;
/// Longest user id, in bytes (the JWT `sub` rule).
pub const MAX_USER_ID_BYTES: usize = 64;
/// Longest source id a room hands out (`s` and a counter).
pub const MAX_SOURCE_ID_BYTES: usize = 24;
/// Longest Twitch OAuth token accepted for a source.
const MAX_TWITCH_TOKEN_BYTES: usize = 200;

/// A user id as a token's `sub` may carry it: 1-64 bytes, no control characters.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_USER_ID_BYTES && !id.chars().any(char::is_control)
}

/// Checks every size-bounded field of `cmd`; `chat_max_chars` is the configured chat limit.
pub fn check(cmd: &ClientCommand, chat_max_chars: usize) -> Result<(), Refusal> {
    use ClientCommand::*;
    match cmd {
        ChatSend { text, .. } => chat_text(text, chat_max_chars),
        QueueAdd { url, title, .. } => {
            if url.trim().len() > MAX_URL_BYTES {
                return Err(not_a_video_link());
            }
            title.as_deref().map_or(Ok(()), entry_title)
        }
        RoomSettings { name: Some(n), .. } => room_name(n),
        RoomRole { user_id, .. }
        | RoomBan { user_id, .. }
        | RoomUnban { user_id, .. }
        | RoomMute { user_id, .. }
        | RoomUnmute { user_id, .. } => role_target(user_id),
        RoomSources { add, remove, .. } => {
            if let Some(spec) = add {
                spec.clone().normalized()?;
            }
            match remove {
                Some(id) if id.len() > MAX_SOURCE_ID_BYTES => Err(no_such_source()),
                _ => Ok(()),
            }
        }
        SignalSend { to, .. } => signal_target(to),
        _ => Ok(()),
    }
}

/// A chat text: not blank, at most `max` characters.
pub fn chat_text(text: &str, max: usize) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::new(ErrorCode::BadRequest, "chat text is empty"));
    }
    // Counting stops one past the limit: a 64 KiB text costs no more than a short one.
    if text.chars().take(max.saturating_add(1)).count() > max {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("chat text is longer than {max} characters"),
        ));
    }
    Ok(())
}

/// An entry title as given (it is trimmed before it is counted).
pub fn entry_title(title: &str) -> Result<(), Refusal> {
    if title.trim().chars().count() > MAX_TITLE_CHARS {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("title is longer than {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok(())
}

/// A room name as given (trimmed, then 1-100 characters).
pub fn room_name(name: &str) -> Result<(), Refusal> {
    let chars = name.trim().chars().count();
    if chars == 0 || chars > MAX_ROOM_NAME_CHARS {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("name must be 1-{MAX_ROOM_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The user a `room.role` names: a role is stored with the room, so it must be a user id.
pub fn role_target(user_id: &str) -> Result<(), Refusal> {
    if is_valid_user_id(user_id) {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::BadRequest,
            "field `user_id` must be a user id: 1-64 bytes without control characters",
        ))
    }
}

/// The user a `signal.send` goes to (the refusal would otherwise echo any length back).
pub fn signal_target(to: &str) -> Result<(), Refusal> {
    if is_valid_user_id(to) {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::BadRequest,
            "field `to` must be a user id: 1-64 bytes without control characters",
        ))
    }
}

/// The refusal for a `room.sources` `remove` of a source the room does not have.
pub fn no_such_source() -> Refusal {
    Refusal::new(ErrorCode::NotFound, "no such source")
}

/// The refusal for a `queue.add` whose URL is neither a YouTube video nor a playlist link.
pub fn not_a_video_link() -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        "url is not a YouTube video or playlist link",
    )
}

impl SourceSpec {
    /// The spec as stored: Twitch logins lowercase without `#` (one channel is one source),
    /// then checked; a spec no platform could serve is `bad_request`.
    pub fn normalized(self) -> Result<SourceSpec, Refusal> {
        let spec = match self {
            SourceSpec::Twitch { channel, auth } => SourceSpec::Twitch {
                channel: channel.trim_start_matches('#').to_ascii_lowercase(),
                auth: auth.map(|a| TwitchAuth {
                    login: a.login.to_ascii_lowercase(),
                    token: a.token,
                }),
            },
            other => other,
        };
        if spec.is_well_formed() {
            Ok(spec)
        } else {
            Err(Refusal::new(
                ErrorCode::BadRequest,
                "source must be a Twitch login, an 11-character YouTube video id, or a UC… channel id",
            ))
        }
    }

    fn is_well_formed(&self) -> bool {
        match self {
            SourceSpec::Twitch { channel, auth } => {
                twitch_login_ok(channel)
                    && auth.as_ref().is_none_or(|a| {
                        // The token goes into an IRC line: no spaces or control characters.
                        twitch_login_ok(&a.login)
                            && (1..=MAX_TWITCH_TOKEN_BYTES).contains(&a.token.len())
                            && a.token.bytes().all(|b| b.is_ascii_graphic())
                    })
            }
            SourceSpec::Youtube {
                video_id: Some(v),
                channel_id: None,
            } => v.len() == 11 && youtube_id_chars(v),
            SourceSpec::Youtube {
                video_id: None,
                channel_id: Some(c),
            } => c.len() == 24 && c.starts_with("UC") && youtube_id_chars(c),
            SourceSpec::Youtube { .. } => false,
        }
    }
}

fn twitch_login_ok(login: &str) -> bool {
    (1..=25).contains(&login.len())
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn youtube_id_chars(id: &str) -> bool {
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;

//! IRCv3 message parsing as Twitch sends it: `@tags :prefix COMMAND params :trailing`, tag
//! values unescaped (`\s` space, `\:` semicolon, `\\` backslash, `\r`, `\n`).

/// Longest line accepted (Twitch lines with every tag stay under 4 KiB; 16 KiB is generous).
pub const MAX_LINE: usize = 16 * 1024;
/// Most tags read from one line.
const MAX_TAGS: usize = 64;
/// Most middle parameters read from one line.
const MAX_PARAMS: usize = 15;

/// One parsed line. Borrows nothing so it can be sent between tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IrcMessage {
    pub tags: Vec<(String, String)>,
    /// `nick!user@host` or a server name, without the leading `:`.
    pub prefix: Option<String>,
    pub command: String,
    /// Middle parameters, then the trailing one (if any) last.
    pub params: Vec<String>,
}

/// Why a line is not IRC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrcError {
    #[error("empty line")]
    Empty,
    #[error("line over {MAX_LINE} bytes")]
    TooLong,
    #[error("no command")]
    NoCommand,
    #[error("bad command `{0}`")]
    BadCommand(String),
}

impl IrcMessage {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A tag that is present and not empty.
    pub fn tag_nonempty(&self, key: &str) -> Option<&str> {
        self.tag(key).filter(|v| !v.is_empty())
    }

    /// The nick part of the prefix.
    pub fn nick(&self) -> Option<&str> {
        let p = self.prefix.as_deref()?;
        Some(p.split('!').next().unwrap_or(p))
    }

    /// The channel a channel command refers to, without `#`.
    pub fn channel(&self) -> Option<&str> {
        self.params.first()?.strip_prefix('#')
    }

    /// The trailing text parameter (the message of PRIVMSG and friends).
    pub fn text(&self) -> Option<&str> {
        if self.params.len() >= 2 {
            self.params.last().map(String::as_str)
        } else {
            None
        }
    }

    /// Parses one line (without its `\r\n`).
    pub fn parse(line: &str) -> Result<IrcMessage, IrcError> {
        if line.len() > MAX_LINE {
            return Err(IrcError::TooLong);
        }
        let mut rest = line.trim_end_matches(['\r', '\n']);
        if rest.trim().is_empty() {
            return Err(IrcError::Empty);
        }
        let mut msg = IrcMessage::default();
        if let Some(after) = rest.strip_prefix('@') {
            let (tags, tail) = after.split_once(' ').unwrap_or((after, ""));
            for pair in tags.split(';').filter(|p| !p.is_empty()).take(MAX_TAGS) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                msg.tags.push((k.to_owned(), unescape_tag(v)));
            }
            rest = tail.trim_start_matches(' ');
        }
        if let Some(after) = rest.strip_prefix(':') {
            let (prefix, tail) = after.split_once(' ').unwrap_or((after, ""));
            msg.prefix = Some(prefix.to_owned());
            rest = tail.trim_start_matches(' ');
        }
        let (command, mut tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if command.is_empty() {
            return Err(IrcError::NoCommand);
        }
        let numeric = command.len() == 3 && command.bytes().all(|b| b.is_ascii_digit());
        if !numeric && !command.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(IrcError::BadCommand(command.chars().take(32).collect()));
        }
        msg.command = command.to_ascii_uppercase();
        loop {
            tail = tail.trim_start_matches(' ');
            if tail.is_empty() {
                break;
            }
            if let Some(trailing) = tail.strip_prefix(':') {
                msg.params.push(trailing.to_owned());
                break;
            }
            if msg.params.len() >= MAX_PARAMS {
                msg.params.push(tail.to_owned());
                break;
            }
            let (p, t) = tail.split_once(' ').unwrap_or((tail, ""));
            msg.params.push(p.to_owned());
            tail = t;
        }
        Ok(msg)
    }
}

/// IRCv3 tag value unescaping; an unknown escape drops the backslash, a trailing one is
/// dropped.
pub fn unescape_tag(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privmsg_with_tags_prefix_and_trailing() {
        // Shape of a real line from Twitch's IRC documentation.
        let line = "@badge-info=;badges=broadcaster/1;client-nonce=459e3142897c7a22b7d275178f2259e0;color=#0000FF;display-name=lovingt3s;emote-only=1;emotes=62835:0-10;first-msg=0;flags=;id=885196de-cb67-427a-baa8-82f9b0fcd05f;mod=0;room-id=713936733;subscriber=0;tmi-sent-ts=1643904084794;turbo=0;user-id=713936733;user-type= :lovingt3s!lovingt3s@lovingt3s.tmi.twitch.tv PRIVMSG #lovingt3s :bleedPurple";
        let m = IrcMessage::parse(line).unwrap_or_default();
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.nick(), Some("lovingt3s"));
        assert_eq!(m.channel(), Some("lovingt3s"));
        assert_eq!(m.text(), Some("bleedPurple"));
        assert_eq!(m.tag("emotes"), Some("62835:0-10"));
        assert_eq!(m.tag("badge-info"), Some(""));
        assert_eq!(m.tag_nonempty("badge-info"), None);
        assert_eq!(m.tag("user-type"), Some(""));
        assert_eq!(m.tags.len(), 17);
    }

    #[test]
    fn tag_escapes() {
        assert_eq!(unescape_tag(r"a\sb\:c\\d\re\nf"), "a b;c\\d\re\nf");
        assert_eq!(unescape_tag(r"trailing\"), "trailing");
        assert_eq!(unescape_tag(r"unknown\qx"), "unknownqx");
        assert_eq!(
            unescape_tag(r"\\s"),
            "\\s",
            "an escaped backslash then a plain s"
        );
        let m = IrcMessage::parse(
            r"@system-msg=15\sraiders\sfrom\sTestChannel\shave\sjoined\n!;empty;k=v\:w :tmi.twitch.tv USERNOTICE #othertestchannel",
        )
        .unwrap_or_default();
        assert_eq!(
            m.tag("system-msg"),
            Some("15 raiders from TestChannel have joined\n!")
        );
        assert_eq!(
            m.tag("empty"),
            Some(""),
            "a key without `=` has an empty value"
        );
        assert_eq!(m.tag("k"), Some("v;w"));
        assert_eq!(m.text(), None, "USERNOTICE without a message");
    }

    #[test]
    fn commands_without_tags_or_prefix() {
        let ping = IrcMessage::parse("PING :tmi.twitch.tv").unwrap_or_default();
        assert_eq!(ping.command, "PING");
        assert_eq!(ping.params, vec!["tmi.twitch.tv"]);
        let rc = IrcMessage::parse(":tmi.twitch.tv RECONNECT\r\n").unwrap_or_default();
        assert_eq!(rc.command, "RECONNECT");
        assert!(rc.params.is_empty());
        let welcome = IrcMessage::parse(":tmi.twitch.tv 001 justinfan123 :Welcome, GLHF!")
            .unwrap_or_default();
        assert_eq!(welcome.command, "001");
        assert_eq!(welcome.params, vec!["justinfan123", "Welcome, GLHF!"]);
        let cap = IrcMessage::parse(":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands")
            .unwrap_or_default();
        assert_eq!(
            cap.params,
            vec!["*", "ACK", "twitch.tv/tags twitch.tv/commands"]
        );
    }

    #[test]
    fn trailing_keeps_colons_and_spaces() {
        let m = IrcMessage::parse(":a!a@a PRIVMSG #c :: hello :)  there ").unwrap_or_default();
        assert_eq!(m.text(), Some(": hello :)  there "));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(IrcMessage::parse(""), Err(IrcError::Empty));
        assert_eq!(IrcMessage::parse("@a=b"), Err(IrcError::NoCommand));
        assert!(matches!(
            IrcMessage::parse("<!DOCTYPE html>"),
            Err(IrcError::BadCommand(_))
        ));
        assert_eq!(
            IrcMessage::parse(&"x".repeat(MAX_LINE + 1)),
            Err(IrcError::TooLong)
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,300}") {
            let _ = IrcMessage::parse(&line);
        }
    }
}

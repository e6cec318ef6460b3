//! Twitch lines → normalized items: PRIVMSG (with bits), USERNOTICE (subs, gifts, raids,
//! announcements), CLEARMSG and CLEARCHAT. Emote ranges are Unicode scalar indices,
//! inclusive on Twitch's side and end-exclusive in `ext.emotes`.

use lockstep_shared::protocol::ext::{Badge, ChatExt, Emote, ExtAuthor, ExtKind, Paid};

use super::irc::IrcMessage;
use crate::engine::IngestItem;

/// Most emotes kept per message.
const MAX_EMOTES: usize = 100;

/// An item for the subscribers of `channel`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelItem {
    pub channel: String,
    pub item: IngestItem,
}

/// Maps a chat line to an item; `None` for lines that are not chat (JOIN, ROOMSTATE, …)
/// and for the per-recipient halves of a mass gift (the announcement is kept).
pub fn normalize(msg: &IrcMessage) -> Option<ChannelItem> {
    let channel = msg.channel()?.to_ascii_lowercase();
    let item = match msg.command.as_str() {
        "PRIVMSG" => privmsg(msg)?,
        "USERNOTICE" => usernotice(msg)?,
        "CLEARMSG" => {
            let target = msg.tag_nonempty("target-msg-id")?.to_owned();
            let mut ext = ChatExt::new(ExtKind::Deletion, "");
            ext.upstream_id = msg.tag_nonempty("id").map(str::to_owned);
            ext.target_user = msg.tag_nonempty("login").map(str::to_owned);
            IngestItem {
                text: String::new(),
                ext,
                upstream_targets: vec![target],
            }
        }
        "CLEARCHAT" => {
            let kind = if msg.text().is_some() {
                ExtKind::Ban
            } else {
                ExtKind::Clear
            };
            let mut ext = ChatExt::new(kind, "");
            ext.target_user = msg.tag_nonempty("target-user-id").map(str::to_owned);
            ext.duration_s = msg
                .tag_nonempty("ban-duration")
                .and_then(|d| d.parse().ok());
            if let Some(login) = msg.text() {
                ext.system_text = Some(match ext.duration_s {
                    Some(d) => format!("{login} was timed out for {d} s"),
                    None => format!("{login} was banned"),
                });
            } else {
                ext.system_text = Some("chat was cleared by a moderator".into());
            }
            IngestItem {
                text: String::new(),
                ext,
                upstream_targets: Vec::new(),
            }
        }
        _ => return None,
    };
    Some(ChannelItem { channel, item })
}

fn author(msg: &IrcMessage) -> ExtAuthor {
    let login = msg
        .tag_nonempty("login")
        .or_else(|| msg.nick())
        .unwrap_or_default()
        .to_owned();
    ExtAuthor {
        id: msg
            .tag_nonempty("user-id")
            .map(str::to_owned)
            .unwrap_or_else(|| login.clone()),
        name: msg
            .tag_nonempty("display-name")
            .map(str::to_owned)
            .unwrap_or_else(|| login.clone()),
        login: (!login.is_empty()).then_some(login),
        colour: msg.tag_nonempty("color").map(str::to_owned),
        badges: badges(msg.tag("badges").unwrap_or_default()),
    }
}

fn badges(tag: &str) -> Vec<Badge> {
    tag.split(',')
        .filter(|b| !b.is_empty())
        .take(32)
        .map(|b| {
            let (id, version) = b.split_once('/').unwrap_or((b, ""));
            Badge {
                id: id.to_owned(),
                version: version.to_owned(),
            }
        })
        .collect()
}

fn privmsg(msg: &IrcMessage) -> Option<IngestItem> {
    let raw = msg.text()?;
    // `/me` arrives as CTCP ACTION.
    let (text, action) = match raw
        .strip_prefix("\u{1}ACTION ")
        .map(|t| t.strip_suffix('\u{1}').unwrap_or(t))
    {
        Some(t) => (t.to_owned(), true),
        None => (raw.to_owned(), false),
    };
    let bits: Option<u64> = msg.tag_nonempty("bits").and_then(|b| b.parse().ok());
    let mut ext = ChatExt::new(
        if bits.is_some() {
            ExtKind::Paid
        } else {
            ExtKind::Text
        },
        "",
    );
    ext.upstream_id = msg.tag_nonempty("id").map(str::to_owned);
    ext.author = Some(author(msg));
    ext.emotes = emotes(msg.tag("emotes").unwrap_or_default(), &text);
    ext.paid = bits.map(|b| Paid {
        amount: b as f64,
        currency: "BITS".into(),
        display: format!("{b} bits"),
    });
    if action {
        ext.system_text = Some("action".into());
    }
    Some(IngestItem {
        text,
        ext,
        upstream_targets: Vec::new(),
    })
}

fn usernotice(msg: &IrcMessage) -> Option<IngestItem> {
    let id = msg.tag("msg-id").unwrap_or_default();
    let num = |k: &str| msg.tag_nonempty(k).and_then(|v| v.parse::<u64>().ok());
    let (kind, count) = match id {
        "sub" | "resub" | "primepaidupgrade" | "giftpaidupgrade" | "anongiftpaidupgrade" => (
            ExtKind::Membership,
            num("msg-param-cumulative-months").or_else(|| num("msg-param-months")),
        ),
        // One of many recipients of a mass gift: the `submysterygift` line already said it.
        "subgift" | "anonsubgift" if msg.tag_nonempty("msg-param-community-gift-id").is_some() => {
            return None
        }
        "subgift" | "anonsubgift" => (ExtKind::Gift, Some(1)),
        "submysterygift" | "anonsubmysterygift" => {
            (ExtKind::Gift, num("msg-param-mass-gift-count"))
        }
        "raid" => (ExtKind::Raid, num("msg-param-viewerCount")),
        _ => (ExtKind::Text, None),
    };
    let text = msg.text().unwrap_or_default().to_owned();
    let mut ext = ChatExt::new(kind, "");
    ext.upstream_id = msg.tag_nonempty("id").map(str::to_owned);
    ext.author = Some(author(msg));
    ext.count = count;
    ext.system_text = msg.tag_nonempty("system-msg").map(str::to_owned);
    ext.emotes = emotes(msg.tag("emotes").unwrap_or_default(), &text);
    Some(IngestItem {
        text,
        ext,
        upstream_targets: Vec::new(),
    })
}

/// `emotes=25:0-4,12-16/1902:6-10`; ranges outside the text are dropped.
fn emotes(tag: &str, text: &str) -> Vec<Emote> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for group in tag.split('/').filter(|g| !g.is_empty()) {
        let Some((id, ranges)) = group.split_once(':') else {
            continue;
        };
        for range in ranges.split(',') {
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(last)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                continue;
            };
            if start > last || last >= chars.len() || out.len() >= MAX_EMOTES {
                continue;
            }
            out.push(Emote {
                id: id.to_owned(),
                name: chars[start..=last].iter().collect(),
                start,
                end: last + 1,
                url: Some(format!(
                    "https://static-cdn.jtvnw.net/emoticons/v2/{id}/default/dark/1.0"
                )),
            });
        }
    }
    out.sort_by_key(|e| e.start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(line: &str) -> Option<ChannelItem> {
        IrcMessage::parse(line).ok().as_ref().and_then(normalize)
    }

    #[test]
    fn privmsg_text_author_badges_colour() {
        let it = norm("@badge-info=subscriber/12;badges=moderator/1,subscriber/12;color=#FF69B4;display-name=Ünïcödé;emotes=;id=e9d998c3-36f1-430f-89ec-6b887c28af36;mod=1;room-id=11148817;tmi-sent-ts=1594545155039;user-id=29803735 :unicode!unicode@unicode.tmi.twitch.tv PRIVMSG #PaJlada :dank cam")
            .map(|c| (c.channel, c.item));
        let Some((channel, item)) = it else {
            panic!("not normalized")
        };
        assert_eq!(channel, "pajlada");
        assert_eq!(item.text, "dank cam");
        assert_eq!(item.ext.kind, ExtKind::Text);
        let a = item.ext.author.unwrap_or_else(|| panic!("no author"));
        assert_eq!(a.id, "29803735");
        assert_eq!(a.name, "Ünïcödé");
        assert_eq!(a.login.as_deref(), Some("unicode"));
        assert_eq!(a.colour.as_deref(), Some("#FF69B4"));
        assert_eq!(
            a.badges,
            vec![
                Badge {
                    id: "moderator".into(),
                    version: "1".into()
                },
                Badge {
                    id: "subscriber".into(),
                    version: "12".into()
                }
            ]
        );
        assert_eq!(
            item.ext.upstream_id.as_deref(),
            Some("e9d998c3-36f1-430f-89ec-6b887c28af36")
        );
    }

    #[test]
    fn emote_ranges_count_unicode_scalars_not_bytes() {
        // "👉 Kappa ä Keepo": the emoji is 4 bytes and 2 UTF-16 units but one scalar.
        let it =
            norm("@emotes=25:2-6/1902:10-14;id=x1;user-id=1 :a!a@a PRIVMSG #c :👉 Kappa ä Keepo")
                .unwrap_or_else(|| panic!("not normalized"));
        let names: Vec<(&str, usize, usize)> = it
            .item
            .ext
            .emotes
            .iter()
            .map(|e| (e.name.as_str(), e.start, e.end))
            .collect();
        assert_eq!(names, vec![("Kappa", 2, 7), ("Keepo", 10, 15)]);
    }

    #[test]
    fn emote_ranges_outside_the_text_are_dropped() {
        let it = norm("@emotes=25:0-4,50-60/x:;id=x2 :a!a@a PRIVMSG #c :Kappa")
            .unwrap_or_else(|| panic!("not normalized"));
        assert_eq!(it.item.ext.emotes.len(), 1);
    }

    #[test]
    fn bits_are_paid() {
        let it = norm("@badge-info=;badges=staff/1,bits/1000;bits=100;color=;display-name=ronni;emotes=;id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;mod=0;room-id=12345678;subscriber=0;tmi-sent-ts=1507246572675;turbo=1;user-id=12345678;user-type=staff :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :cheer100")
            .unwrap_or_else(|| panic!("not normalized"));
        assert_eq!(it.item.ext.kind, ExtKind::Paid);
        let paid = it.item.ext.paid.unwrap_or_else(|| panic!("no paid"));
        assert_eq!((paid.amount, paid.currency.as_str()), (100.0, "BITS"));
        assert_eq!(
            it.item.ext.author.and_then(|a| a.colour),
            None,
            "empty colour tag"
        );
    }

    #[test]
    fn action_messages_lose_the_ctcp_envelope() {
        let it = norm("@id=x3 :a!a@a PRIVMSG #c :\u{1}ACTION dances\u{1}")
            .unwrap_or_else(|| panic!("not normalized"));
        assert_eq!(it.item.text, "dances");
        assert_eq!(it.item.ext.system_text.as_deref(), Some("action"));
    }

    #[test]
    fn usernotices_sub_gift_raid() {
        let resub = norm(r"@badge-info=subscriber/6;badges=subscriber/6;color=#008000;display-name=ronni;emotes=;id=db25007f-7a18-43eb-9379-80131e44d633;login=ronni;mod=0;msg-id=resub;msg-param-cumulative-months=6;msg-param-streak-months=2;msg-param-should-share-streak=1;msg-param-sub-plan=Prime;msg-param-sub-plan-name=Prime;room-id=12345678;subscriber=1;system-msg=ronni\shas\ssubscribed\sfor\s6\smonths!;tmi-sent-ts=1507246572675;turbo=1;user-id=87654321;user-type=staff :tmi.twitch.tv USERNOTICE #dallas :Great stream -- keep it up!")
            .unwrap_or_else(|| panic!("resub"));
        assert_eq!(resub.item.ext.kind, ExtKind::Membership);
        assert_eq!(resub.item.ext.count, Some(6));
        assert_eq!(resub.item.text, "Great stream -- keep it up!");
        assert_eq!(
            resub.item.ext.system_text.as_deref(),
            Some("ronni has subscribed for 6 months!")
        );
        let gift = norm(r"@badge-info=;badges=staff/1,premium/1;color=#0000FF;display-name=TWW2;emotes=;id=e9176cd8-5e22-4684-ad40-ce53c2561c5e;login=tww2;mod=0;msg-id=subgift;msg-param-months=1;msg-param-recipient-display-name=Mr_Woodchuck;msg-param-recipient-id=55554444;msg-param-recipient-name=mr_woodchuck;msg-param-sub-plan-name=House\sof\sNyoro~n;msg-param-sub-plan=1000;room-id=19571752;subscriber=0;system-msg=TWW2\sgifted\sa\sTier\s1\ssub\sto\sMr_Woodchuck!;tmi-sent-ts=1521159445153;turbo=0;user-id=87654321;user-type=staff :tmi.twitch.tv USERNOTICE #forstycup")
            .unwrap_or_else(|| panic!("gift"));
        assert_eq!(
            (gift.item.ext.kind, gift.item.ext.count),
            (ExtKind::Gift, Some(1))
        );
        let mystery = norm(r"@display-name=Santa;id=m9;login=santa;msg-id=submysterygift;msg-param-mass-gift-count=20;msg-param-sub-plan=2000;user-id=5 :tmi.twitch.tv USERNOTICE #xqc")
            .unwrap_or_else(|| panic!("mystery"));
        assert_eq!(mystery.item.ext.count, Some(20));
        assert!(
            norm("@display-name=Santa;msg-id=subgift;msg-param-community-gift-id=123;id=m10 :tmi.twitch.tv USERNOTICE #xqc").is_none(),
            "per-recipient halves of a mass gift are folded into its announcement"
        );
        let raid = norm(r"@badge-info=;badges=turbo/1;color=#9ACD32;display-name=TestChannel;emotes=;id=3d830f12-795c-447d-af3c-ea05e40fbddb;login=testchannel;mod=0;msg-id=raid;msg-param-displayName=TestChannel;msg-param-login=testchannel;msg-param-viewerCount=15;room-id=33332222;subscriber=0;system-msg=15\sraiders\sfrom\sTestChannel\shave\sjoined\n!;tmi-sent-ts=1507246572675;turbo=1;user-id=123456;user-type= :tmi.twitch.tv USERNOTICE #othertestchannel")
            .unwrap_or_else(|| panic!("raid"));
        assert_eq!(
            (raid.item.ext.kind, raid.item.ext.count),
            (ExtKind::Raid, Some(15))
        );
        assert_eq!(raid.channel, "othertestchannel");
    }

    #[test]
    fn moderation_lines() {
        let del = norm("@login=foo;room-id=;target-msg-id=94e6c7ff-bf98-4faa-af5d-7ad633a158a9;tmi-sent-ts=1642720582342 :tmi.twitch.tv CLEARMSG #bar :what a great day")
            .unwrap_or_else(|| panic!("clearmsg"));
        assert_eq!(del.item.ext.kind, ExtKind::Deletion);
        assert_eq!(
            del.item.upstream_targets,
            vec!["94e6c7ff-bf98-4faa-af5d-7ad633a158a9"]
        );
        let timeout = norm("@ban-duration=350;room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642715756806 :tmi.twitch.tv CLEARCHAT #dallas :ronni")
            .unwrap_or_else(|| panic!("timeout"));
        assert_eq!(timeout.item.ext.kind, ExtKind::Ban);
        assert_eq!(timeout.item.ext.target_user.as_deref(), Some("87654321"));
        assert_eq!(timeout.item.ext.duration_s, Some(350));
        let clear =
            norm("@room-id=12345678;tmi-sent-ts=1642715695392 :tmi.twitch.tv CLEARCHAT #dallas")
                .unwrap_or_else(|| panic!("clear"));
        assert_eq!(clear.item.ext.kind, ExtKind::Clear);
    }

    #[test]
    fn non_chat_lines_are_ignored() {
        assert!(norm(":justinfan1!justinfan1@justinfan1.tmi.twitch.tv JOIN #c").is_none());
        assert!(norm("@emote-only=0;room-id=1 :tmi.twitch.tv ROOMSTATE #c").is_none());
        assert!(norm("PING :tmi.twitch.tv").is_none());
    }
}

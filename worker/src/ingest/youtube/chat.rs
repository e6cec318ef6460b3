//! InnerTube `get_live_chat` responses → normalized items, the next continuation and its
//! poll interval. Renderers handled: text, paid message (Super Chat), paid sticker, membership
//! (new and milestone), gift purchase announcements, deletions by item and by author.
//! Renderers we do not show (engagement banners, placeholders, tickers) are skipped; a
//! response without the expected skeleton is a format error.

use lockstep_shared::protocol::ext::{Badge, ChatExt, Emote, ExtAuthor, ExtKind, Paid};
use lockstep_shared::protocol::nul;
use serde_json::Value;

use crate::engine::IngestItem;

/// One parsed response.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPage {
    /// Items with their upstream ids, in order.
    pub items: Vec<IngestItem>,
    /// The next continuation and the interval upstream suggests; `None`: the stream ended.
    pub next: Option<(String, u64)>,
}

/// The response is not shaped like live chat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("live chat response format: {0}")]
pub struct ChatFormatError(pub String);

/// Most actions read from one response.
const MAX_ACTIONS: usize = 2_000;

/// Parses a `get_live_chat` body.
pub fn parse_chat(body: &[u8]) -> Result<ChatPage, ChatFormatError> {
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| ChatFormatError(format!("not JSON: {e}")))?;
    nul::scrub_nul(&mut v);
    if !v.is_object() {
        return Err(ChatFormatError("not an object".into()));
    }
    let Some(cont) = v["continuationContents"]["liveChatContinuation"].as_object() else {
        // The stream ended (or chat closed): InnerTube answers without continuation contents.
        if v.get("responseContext").is_some() {
            return Ok(ChatPage {
                items: Vec::new(),
                next: None,
            });
        }
        return Err(ChatFormatError("no responseContext".into()));
    };
    let next = cont
        .get("continuations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|c| {
            [
                "invalidationContinuationData",
                "timedContinuationData",
                "reloadContinuationData",
            ]
            .iter()
            .find_map(|k| {
                let d = &c[k];
                let token = d["continuation"].as_str()?;
                Some((token.to_owned(), d["timeoutMs"].as_u64().unwrap_or(5_000)))
            })
        });
    let mut items = Vec::new();
    if let Some(actions) = cont.get("actions") {
        let actions = actions
            .as_array()
            .ok_or_else(|| ChatFormatError("actions is not a list".into()))?;
        for action in actions.iter().take(MAX_ACTIONS) {
            if let Some(item) = action_item(action)? {
                items.push(item);
            }
        }
    }
    Ok(ChatPage { items, next })
}

fn action_item(action: &Value) -> Result<Option<IngestItem>, ChatFormatError> {
    if let Some(item) = action.get("addChatItemAction").map(|a| &a["item"]) {
        let Some((name, r)) = item.as_object().and_then(|o| o.iter().next()) else {
            return Err(ChatFormatError("addChatItemAction without item".into()));
        };
        return Ok(renderer_item(name, r));
    }
    for (key, field) in [
        ("markChatItemAsDeletedAction", "targetItemId"),
        ("removeChatItemAction", "targetItemId"),
    ] {
        if let Some(a) = action.get(key) {
            let target = a[field]
                .as_str()
                .ok_or_else(|| ChatFormatError(format!("{key} without {field}")))?;
            return Ok(Some(IngestItem {
                text: String::new(),
                ext: ChatExt::new(ExtKind::Deletion, ""),
                upstream_targets: vec![target.to_owned()],
            }));
        }
    }
    for key in [
        "markChatItemsByAuthorAsDeletedAction",
        "removeChatItemByAuthorAction",
    ] {
        if let Some(a) = action.get(key) {
            let channel = a["externalChannelId"]
                .as_str()
                .ok_or_else(|| ChatFormatError(format!("{key} without externalChannelId")))?;
            let mut ext = ChatExt::new(ExtKind::Ban, "");
            ext.target_user = Some(channel.to_owned());
            ext.system_text =
                Some(runs_text(&a["deletedStateMessage"]).0).filter(|t| !t.is_empty());
            return Ok(Some(IngestItem {
                text: String::new(),
                ext,
                upstream_targets: Vec::new(),
            }));
        }
    }
    // Tickers, banners, polls, replacements: not chat.
    Ok(None)
}

fn renderer_item(name: &str, r: &Value) -> Option<IngestItem> {
    let (kind, message) = match name {
        "liveChatTextMessageRenderer" => (ExtKind::Text, &r["message"]),
        "liveChatPaidMessageRenderer" | "liveChatPaidStickerRenderer" => {
            (ExtKind::Paid, &r["message"])
        }
        "liveChatMembershipItemRenderer" => (ExtKind::Membership, &r["message"]),
        "liveChatSponsorshipsGiftPurchaseAnnouncementRenderer" => (ExtKind::Gift, &Value::Null),
        _ => return None,
    };
    let id = r["id"].as_str()?.to_owned();
    let (text, emotes) = runs_text(message);
    let mut ext = ChatExt::new(kind, "");
    ext.upstream_id = Some(id);
    let author_src = if kind == ExtKind::Gift {
        &r["header"]["liveChatSponsorshipsHeaderRenderer"]
    } else {
        r
    };
    ext.author = Some(ExtAuthor {
        id: r["authorExternalChannelId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        name: simple_or_runs(&author_src["authorName"]),
        login: None,
        colour: None,
        badges: badges(&author_src["authorBadges"]),
    });
    ext.emotes = emotes;
    match kind {
        ExtKind::Paid => {
            let display = simple_or_runs(&r["purchaseAmountText"]);
            ext.paid = Some(parse_amount(&display));
        }
        ExtKind::Membership => {
            let primary = simple_or_runs(&r["headerPrimaryText"]);
            let sub = simple_or_runs(&r["headerSubtext"]);
            ext.count = first_number(&primary);
            ext.system_text = Some(if primary.is_empty() { sub } else { primary });
        }
        ExtKind::Gift => {
            let primary = simple_or_runs(&author_src["primaryText"]);
            ext.count = first_number(&primary);
            ext.system_text = Some(primary);
        }
        _ => {}
    }
    Some(IngestItem {
        text,
        ext,
        upstream_targets: Vec::new(),
    })
}

/// Text of `{"simpleText"}` or `{"runs":[...]}`, with emoji runs as their shortcut and
/// custom emoji recorded as emotes (char ranges into the text).
fn runs_text(v: &Value) -> (String, Vec<Emote>) {
    if let Some(s) = v["simpleText"].as_str() {
        return (s.to_owned(), Vec::new());
    }
    let mut text = String::new();
    let mut emotes = Vec::new();
    for run in v["runs"].as_array().into_iter().flatten() {
        if let Some(t) = run["text"].as_str() {
            text.push_str(t);
        } else if let Some(e) = run.get("emoji") {
            let custom = e["isCustomEmoji"].as_bool() == Some(true);
            let shortcut = e["shortcuts"][0].as_str();
            let id = e["emojiId"].as_str().unwrap_or_default();
            if custom {
                let name = shortcut.unwrap_or(id).to_owned();
                let start = text.chars().count();
                text.push_str(&name);
                emotes.push(Emote {
                    id: id.to_owned(),
                    start,
                    end: start + name.chars().count(),
                    name,
                    url: e["image"]["thumbnails"]
                        .as_array()
                        .and_then(|t| t.last())
                        .and_then(|t| t["url"].as_str())
                        .map(str::to_owned),
                });
            } else {
                // Standard emoji: the id is the emoji itself.
                text.push_str(if id.is_empty() {
                    shortcut.unwrap_or("")
                } else {
                    id
                });
            }
        }
    }
    (text, emotes)
}

fn simple_or_runs(v: &Value) -> String {
    runs_text(v).0
}

fn badges(v: &Value) -> Vec<Badge> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let r = &b["liveChatAuthorBadgeRenderer"];
            let tooltip = r["tooltip"].as_str().unwrap_or_default();
            let id = match r["icon"]["iconType"].as_str() {
                Some(icon) => icon.to_ascii_lowercase(),
                None if r.get("customThumbnail").is_some() => "member".to_owned(),
                None => return None,
            };
            Some(Badge {
                id,
                version: tooltip.to_owned(),
            })
        })
        .take(16)
        .collect()
}

fn first_number(s: &str) -> Option<u64> {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Symbols YouTube shows, mapped to ISO 4217 (longest first so `CA$` beats `$`).
const CURRENCIES: &[(&str, &str)] = &[
    ("CA$", "CAD"),
    ("A$", "AUD"),
    ("NT$", "TWD"),
    ("HK$", "HKD"),
    ("MX$", "MXN"),
    ("NZ$", "NZD"),
    ("R$", "BRL"),
    ("US$", "USD"),
    ("$", "USD"),
    ("￥", "JPY"),
    ("¥", "JPY"),
    ("€", "EUR"),
    ("£", "GBP"),
    ("₩", "KRW"),
    ("₹", "INR"),
    ("₱", "PHP"),
    ("₫", "VND"),
    ("₪", "ILS"),
];

/// `$5.00`, `￥320`, `€2,00`, `PHP 100.00`, `1.000,50 €` → amount + currency.
pub fn parse_amount(display: &str) -> Paid {
    let trimmed = display.trim();
    let currency = CURRENCIES
        .iter()
        .find(|(sym, _)| trimmed.starts_with(sym) || trimmed.ends_with(sym))
        .map(|(_, iso)| (*iso).to_owned())
        .or_else(|| {
            let code: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_uppercase())
                .collect();
            (code.len() == 3).then_some(code)
        })
        .unwrap_or_else(|| {
            trimmed
                .chars()
                .filter(|c| !c.is_ascii_digit() && !matches!(c, '.' | ',' | ' '))
                .collect()
        });
    let num: String = trimmed
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, '.' | ','))
        .collect();
    let normalized = match (num.rfind(','), num.rfind('.')) {
        // `1.000,50` or `2,00`: the comma is the decimal separator.
        (Some(c), Some(d)) if c > d => num.replace('.', "").replace(',', "."),
        (Some(c), None) if num.len() - c - 1 <= 2 => num.replace(',', "."),
        _ => num.replace(',', ""),
    };
    Paid {
        amount: normalized.parse().unwrap_or(0.0),
        currency,
        display: trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_many_currencies() {
        let cases = [
            ("$5.00", 5.0, "USD"),
            ("￥320", 320.0, "JPY"),
            ("CA$10.00", 10.0, "CAD"),
            ("€2,00", 2.0, "EUR"),
            ("PHP 100.00", 100.0, "PHP"),
            ("₩1,000", 1000.0, "KRW"),
            ("1.000,50 €", 1000.5, "EUR"),
            ("$1,234.56", 1234.56, "USD"),
        ];
        for (display, amount, currency) in cases {
            let p = parse_amount(display);
            assert_eq!(
                (p.amount, p.currency.as_str()),
                (amount, currency),
                "{display}"
            );
        }
    }

    #[test]
    fn ended_stream_has_no_next() {
        let page = parse_chat(br#"{"responseContext":{"serviceTrackingParams":[]}}"#);
        assert_eq!(
            page,
            Ok(ChatPage {
                items: vec![],
                next: None
            })
        );
    }

    #[test]
    fn garbage_is_a_format_error() {
        assert!(parse_chat(b"<html>").is_err());
        assert!(parse_chat(b"[]").is_err());
        assert!(parse_chat(br#"{"error":{"code":400}}"#).is_err());
        assert!(
            parse_chat(br#"{"responseContext":{},"continuationContents":{"liveChatContinuation":{"actions":{}}}}"#)
                .is_err()
        );
    }
}

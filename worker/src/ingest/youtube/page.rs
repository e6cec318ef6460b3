//! The watch page (`/watch?v=…`, or `/channel/<id>/live`, which serves the live video's
//! watch page): `ytcfg.set({...})` gives the InnerTube API key, client version and visitor
//! data; `ytInitialPlayerResponse` says whether the video is live; `ytInitialData` holds
//! the live chat's first continuation.

use lockstep_shared::protocol::nul;
use serde_json::Value;

/// What a page says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageInfo {
    /// Live now, with chat.
    Live(LivePage),
    /// Not live: no live video on the channel, upcoming, or ended (`ended`: the video was a
    /// live stream and is over).
    NotLive { ended: bool, reason: String },
}

/// A live video's chat entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePage {
    pub video_id: String,
    pub continuation: String,
    pub client: ClientCfg,
}

/// InnerTube client settings from the page's ytcfg.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientCfg {
    pub api_key: String,
    pub client_version: String,
    #[serde(default)]
    pub visitor_data: String,
}

impl ClientCfg {
    /// The JSON body and headers of an InnerTube call that follows `continuation`, as the
    /// web client sends them (`get_live_chat`, `browse`); `base` is the site's origin.
    pub fn continuation_request(
        &self,
        base: &str,
        continuation: &str,
    ) -> (String, [(&'static str, String); 4]) {
        let body = serde_json::json!({
            "context": {"client": {
                "clientName": "WEB",
                "clientVersion": self.client_version,
                "visitorData": self.visitor_data,
                "hl": "en",
                "gl": "US",
            }},
            "continuation": continuation,
        });
        let headers = [
            ("x-youtube-client-name", "1".to_owned()),
            ("x-youtube-client-version", self.client_version.clone()),
            ("x-goog-visitor-id", self.visitor_data.clone()),
            ("origin", base.to_owned()),
        ];
        (body.to_string(), headers)
    }
}

/// The page is not what we know how to read: a format break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watch page format: {0}")]
pub struct PageError(pub String);

/// Reads a watch or channel-live page.
pub fn parse_page(html: &str) -> Result<PageInfo, PageError> {
    let client = client_cfg(html)?;
    let data =
        embedded_json(html, "ytInitialData").ok_or_else(|| PageError("no ytInitialData".into()))?;
    let player = embedded_json(html, "ytInitialPlayerResponse");
    let details = player.as_ref().map(|p| &p["videoDetails"]);
    let video_id = details
        .and_then(|d| d["videoId"].as_str())
        .or_else(|| data["currentVideoEndpoint"]["watchEndpoint"]["videoId"].as_str())
        .map(str::to_owned);
    let Some(video_id) = video_id else {
        return Ok(PageInfo::NotLive {
            ended: false,
            reason: "no live video".into(),
        });
    };
    let is_live = details.is_some_and(|d| d["isLive"].as_bool() == Some(true));
    let was_live = details.is_some_and(|d| d["isLiveContent"].as_bool() == Some(true));
    let upcoming = details.is_some_and(|d| d["isUpcoming"].as_bool() == Some(true));
    let chat =
        &data["contents"]["twoColumnWatchNextResults"]["conversationBar"]["liveChatRenderer"];
    let continuation = chat["continuations"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            [
                "reloadContinuationData",
                "invalidationContinuationData",
                "timedContinuationData",
            ]
            .iter()
            .find_map(|k| c[k]["continuation"].as_str())
        })
        .map(str::to_owned);
    match (
        is_live || (player.is_none() && continuation.is_some()),
        continuation,
    ) {
        (true, Some(continuation)) => Ok(PageInfo::Live(LivePage {
            video_id,
            continuation,
            client,
        })),
        (true, None) => Ok(PageInfo::NotLive {
            ended: false,
            reason: format!("{video_id} is live but its chat is disabled"),
        }),
        (false, _) if upcoming => Ok(PageInfo::NotLive {
            ended: false,
            reason: format!("{video_id} has not started"),
        }),
        (false, _) => Ok(PageInfo::NotLive {
            ended: was_live,
            reason: format!("{video_id} is not live"),
        }),
    }
}

/// The InnerTube client settings of any YouTube page, for the API calls that follow it.
pub fn client_cfg(html: &str) -> Result<ClientCfg, PageError> {
    Ok(ClientCfg {
        api_key: ytcfg_string(html, "INNERTUBE_API_KEY")
            .ok_or_else(|| PageError("no INNERTUBE_API_KEY in ytcfg".into()))?,
        client_version: ytcfg_string(html, "INNERTUBE_CONTEXT_CLIENT_VERSION")
            .or_else(|| ytcfg_string(html, "INNERTUBE_CLIENT_VERSION"))
            .ok_or_else(|| PageError("no client version in ytcfg".into()))?,
        visitor_data: ytcfg_string(html, "VISITOR_DATA").unwrap_or_default(),
    })
}

/// A string value in the page's `ytcfg.set({...})` calls (JSON string, unescaped).
fn ytcfg_string(html: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let at = html.find(&needle)? + needle.len();
    let rest = html[at..].trim_start();
    let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let mut s = de.next()?.ok()?;
    nul::scrub_str(&mut s);
    Some(s)
}

/// The JSON object assigned to `name` in an inline script (`var ytInitialData = {...};` or
/// `window["ytInitialData"] = {...};`).
pub(super) fn embedded_json(html: &str, name: &str) -> Option<Value> {
    let mut from = 0;
    while let Some(pos) = html[from..].find(name) {
        let after = from + pos + name.len();
        let rest = html[after..].trim_start_matches(['"', ']', ' ']);
        if let Some(obj) = rest.strip_prefix('=') {
            let obj = obj.trim_start();
            if obj.starts_with('{') {
                let mut de = serde_json::Deserializer::from_str(obj).into_iter::<Value>();
                if let Some(Ok(mut v)) = de.next() {
                    nul::scrub_nul(&mut v);
                    return Some(v);
                }
            }
        }
        from = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(player: &str, data: &str) -> String {
        format!(
            r#"<!DOCTYPE html><html><head><script nonce="x">ytcfg.set({{"CLIENT_CANARY_STATE":"none","INNERTUBE_API_KEY":"AIzaSyAO_FJ2SlqU8Q4STEHLGCilw_Y9_11qcW8","INNERTUBE_CONTEXT_CLIENT_NAME":1,"INNERTUBE_CONTEXT_CLIENT_VERSION":"2.20231208.01.00","VISITOR_DATA":"CgtxX2ZfNHZ4dHB3MCiB8NSrBjIKCgJKUBIEGgAgQQ%3D%3D"}}); window.ytcfg.obfuscatedData_ = [];</script>
<script nonce="x">var ytInitialPlayerResponse = {player};var meta = document.createElement('meta');</script>
<script nonce="x">var ytInitialData = {data};</script></head></html>"#
        )
    }

    const LIVE_DATA: &str = r#"{"responseContext":{},"contents":{"twoColumnWatchNextResults":{"conversationBar":{"liveChatRenderer":{"continuations":[{"reloadContinuationData":{"continuation":"0ofMyAOBAhpeQ2lrcUp3b1lWVU5rZVhGQllWcEVTMGhZWnpSQmFHazNWa1ZPVkdoUkVndDBhM2sxUVRKblRIVmFieG9UNnFqZHVRRU5DZ3QwYTNrMVFUSm5USFZhYnlBQg%3D%3D","clickTrackingParams":"CAEQxqYCIhMI"}}],"header":{},"isReplay":false}}}},"currentVideoEndpoint":{"watchEndpoint":{"videoId":"tky5A2gLuZo"}}}"#;

    #[test]
    fn live_page_gives_video_continuation_and_client() {
        let html = page(
            r#"{"videoDetails":{"videoId":"tky5A2gLuZo","title":"【LIVE】","isLive":true,"isLiveContent":true}}"#,
            LIVE_DATA,
        );
        let Ok(PageInfo::Live(live)) = parse_page(&html) else {
            panic!("not live: {:?}", parse_page(&html))
        };
        assert_eq!(live.video_id, "tky5A2gLuZo");
        assert!(live.continuation.starts_with("0ofMyAOBAhpe"));
        assert_eq!(
            live.client.api_key,
            "AIzaSyAO_FJ2SlqU8Q4STEHLGCilw_Y9_11qcW8"
        );
        assert_eq!(live.client.client_version, "2.20231208.01.00");
        assert_eq!(
            live.client.visitor_data,
            "CgtxX2ZfNHZ4dHB3MCiB8NSrBjIKCgJKUBIEGgAgQQ%3D%3D"
        );
    }

    #[test]
    fn ended_upcoming_and_channel_without_live() {
        let ended = page(
            r#"{"videoDetails":{"videoId":"tky5A2gLuZo","isLiveContent":true}}"#,
            r#"{"contents":{}}"#,
        );
        assert!(matches!(
            parse_page(&ended),
            Ok(PageInfo::NotLive { ended: true, .. })
        ));
        let upcoming = page(
            r#"{"videoDetails":{"videoId":"tky5A2gLuZo","isUpcoming":true,"isLiveContent":true}}"#,
            r#"{"contents":{}}"#,
        );
        assert!(matches!(
            parse_page(&upcoming),
            Ok(PageInfo::NotLive { ended: false, .. })
        ));
        let channel = page(
            r#"{"playabilityStatus":{"status":"OK"}}"#,
            r#"{"contents":{"twoColumnBrowseResultsRenderer":{}}}"#,
        );
        assert!(matches!(
            parse_page(&channel),
            Ok(PageInfo::NotLive { ended: false, .. })
        ));
    }

    #[test]
    fn a_changed_page_is_a_format_error() {
        assert!(parse_page("<html>consent.youtube.com</html>").is_err());
        let no_data = r#"ytcfg.set({"INNERTUBE_API_KEY":"k","INNERTUBE_CLIENT_VERSION":"2.1"});"#;
        assert_eq!(
            parse_page(no_data),
            Err(PageError("no ytInitialData".into()))
        );
    }

    #[test]
    fn window_bracket_assignment_is_found() {
        let html = r#"ytcfg.set({"INNERTUBE_API_KEY":"k","INNERTUBE_CLIENT_VERSION":"2.1"});
            window["ytInitialData"] = {"currentVideoEndpoint":{"watchEndpoint":{"videoId":"abcdefghijk"}},"contents":{"twoColumnWatchNextResults":{"conversationBar":{"liveChatRenderer":{"continuations":[{"reloadContinuationData":{"continuation":"C1"}}]}}}}};"#;
        let Ok(PageInfo::Live(live)) = parse_page(html) else {
            panic!("not live")
        };
        assert_eq!(
            (live.video_id.as_str(), live.continuation.as_str()),
            ("abcdefghijk", "C1")
        );
    }
}

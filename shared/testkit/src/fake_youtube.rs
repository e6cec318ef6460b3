//! A fake YouTube speaking the real formats: the watch page and `/channel/<id>/live` (HTML
//! with `ytcfg.set`, `ytInitialPlayerResponse`, `ytInitialData` and the live chat's first
//! continuation), and InnerTube `POST /youtubei/v1/live_chat/get_live_chat?key=…` answering
//! with `liveChatContinuation` actions and the next `invalidationContinuationData`. Bodies
//! are gzipped when the client accepts it, as YouTube does. Other videos' watch pages
//! carry their title and length (`add_video`), or say "Video unavailable" as YouTube's do;
//! playlist pages (`add_playlist`) list their videos 100 at a time, the rest through
//! InnerTube `POST /youtubei/v1/browse` continuations, or say the playlist does not exist. Built from the fixtures in
//! `fixtures/youtube/` (shapes of real captures). Tests queue actions and inject faults.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WATCH: &str = include_str!("../fixtures/youtube/watch_live.html");
const CONVERSATION: &str = include_str!("../fixtures/youtube/conversation_bar_live.json");
const WATCH_VIDEO: &str = include_str!("../fixtures/youtube/watch_video.html");
const WATCH_UNAVAILABLE: &str = include_str!("../fixtures/youtube/watch_unavailable.html");
const PLAYLIST: &str = include_str!("../fixtures/youtube/playlist.html");
const PLAYLIST_ITEM: &str = include_str!("../fixtures/youtube/playlist_item.json");
const PLAYLIST_CONTINUATION: &str =
    include_str!("../fixtures/youtube/playlist_continuation_item.json");
const BROWSE: &str = include_str!("../fixtures/youtube/browse_continuation.json");
/// Videos per playlist page, as YouTube shows them.
const PLAYLIST_PAGE: usize = 100;
const PLAYLIST_MISSING: &str = include_str!("../fixtures/youtube/playlist_missing.html");
const CHANNEL_OFFLINE: &str = include_str!("../fixtures/youtube/channel_offline.html");
const CHAT: &str = include_str!("../fixtures/youtube/get_live_chat.json");
const CHAT_ENDED: &str = include_str!("../fixtures/youtube/get_live_chat_ended.json");

pub const API_KEY: &str = "AIzaSyAO_FJ2SlqU8Q4STEHLGCilw_Y9_11qcW8";
pub const VISITOR: &str = "CgtxX2ZfNHZ4dHB3MCiB8NSrBjIKCgJKUBIEGgAgQQ%3D%3D";

/// An injected answer for the next request (page or chat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    /// 200 with a body that is not what the client expects (a changed format).
    Malformed,
}

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    /// get_live_chat: the continuation the client sent.
    pub continuation: Option<String>,
}

struct State {
    live: bool,
    video_id: String,
    channel_id: String,
    /// Every action ever pushed; a continuation token stands for a position in it, so a
    /// client resuming from an older token gets what it missed (and repeats).
    log: Vec<Value>,
    /// Position of each issued token `ct-<index>`.
    tokens: Vec<usize>,
    /// Answer each poll starting one action early (YouTube repeats items now and then).
    repeat: bool,
    faults: VecDeque<Fault>,
    ended: bool,
    timeout_ms: u64,
    seen: Vec<Seen>,
    /// Ordinary videos: id → (title, length in seconds).
    videos: HashMap<String, (String, u64)>,
    /// Playlists: id → (title, video ids; ids not added as videos show as deleted).
    playlists: HashMap<String, (String, Vec<String>)>,
}

/// A running fake; stops when dropped.
pub struct FakeYoutube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeYoutube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which fixture an action is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    TextWithEmoji,
    SuperChat,
    Sticker,
    Membership,
    Gift,
    Engagement,
}

impl FakeYoutube {
    /// Live with the given video on the given channel.
    pub async fn start(video_id: &str, channel_id: &str) -> FakeYoutube {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            live: true,
            video_id: video_id.to_owned(),
            channel_id: channel_id.to_owned(),
            log: Vec::new(),
            tokens: Vec::new(),
            repeat: false,
            faults: VecDeque::new(),
            ended: false,
            timeout_ms: 100,
            seen: Vec::new(),
            videos: HashMap::new(),
            playlists: HashMap::new(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        FakeYoutube { addr, state, task }
    }

    /// An ordinary (not live) video whose watch page gives `title` and `length_s`.
    pub fn add_video(&self, video_id: &str, title: &str, length_s: u64) {
        self.state
            .lock()
            .unwrap()
            .videos
            .insert(video_id.to_owned(), (title.to_owned(), length_s));
    }

    /// A playlist of `videos` (those not added with `add_video` are listed as deleted).
    pub fn add_playlist(&self, list_id: &str, title: &str, videos: &[&str]) {
        let videos = videos.iter().map(|v| (*v).to_owned()).collect();
        self.state
            .lock()
            .unwrap()
            .playlists
            .insert(list_id.to_owned(), (title.to_owned(), videos));
    }

    /// Watch page loads of `video_id`.
    pub fn watch_loads(&self, video_id: &str) -> usize {
        let path = format!("/watch?v={video_id}");
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// What `LOCKSTEP_INGEST__YOUTUBE__BASE_URL` takes.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A chat action from a fixture, with its item id and author.
    pub fn action(
        kind: ActionKind,
        id: &str,
        author: &str,
        author_id: &str,
        amount: &str,
    ) -> Value {
        let text = match kind {
            ActionKind::TextWithEmoji => include_str!("../fixtures/youtube/action_text_emoji.json"),
            ActionKind::SuperChat => include_str!("../fixtures/youtube/action_superchat.json"),
            ActionKind::Sticker => include_str!("../fixtures/youtube/action_sticker.json"),
            ActionKind::Membership => include_str!("../fixtures/youtube/action_membership.json"),
            ActionKind::Gift => include_str!("../fixtures/youtube/action_gift.json"),
            ActionKind::Engagement => include_str!("../fixtures/youtube/action_engagement.json"),
        };
        let filled = text
            .replace("__ID__", id)
            .replace("__AUTHOR__", author)
            .replace("__AUTHOR_ID__", author_id)
            .replace("__AMOUNT__", amount);
        serde_json::from_str(&filled).unwrap()
    }

    /// `markChatItemAsDeletedAction` for one item.
    pub fn deleted(id: &str) -> Value {
        let t = include_str!("../fixtures/youtube/action_deleted.json").replace("__ID__", id);
        serde_json::from_str(&t).unwrap()
    }

    /// `markChatItemsByAuthorAsDeletedAction` for one author.
    pub fn author_deleted(author_id: &str) -> Value {
        let t = include_str!("../fixtures/youtube/action_author_deleted.json")
            .replace("__AUTHOR_ID__", author_id);
        serde_json::from_str(&t).unwrap()
    }

    /// Appends actions to the chat; polls from older positions receive them.
    pub fn push(&self, actions: impl IntoIterator<Item = Value>) {
        self.state.lock().unwrap().log.extend(actions);
    }

    /// Start every answer one action early, repeating the last one already sent.
    pub fn set_repeat(&self, on: bool) {
        self.state.lock().unwrap().repeat = on;
    }

    pub fn set_live(&self, live: bool) {
        let mut s = self.state.lock().unwrap();
        s.live = live;
        if live {
            s.ended = false;
        }
    }

    /// The stream ends: polls answer without continuation contents, pages say not live.
    pub fn end_stream(&self) {
        let mut s = self.state.lock().unwrap();
        s.ended = true;
        s.live = false;
    }

    /// Answers the next requests with these faults, in order.
    pub fn fault(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// get_live_chat requests so far.
    pub fn polls(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.contains("get_live_chat"))
            .count()
    }

    /// Page requests so far.
    pub fn page_loads(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.path.contains("get_live_chat"))
            .count()
    }
}

async fn serve(mut sock: TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let gzip = headers
        .get("accept-encoding")
        .is_some_and(|v| v.contains("gzip"));
    let (status, ctype, text) = answer(&st, &method, &path, &headers, &body);
    let mut payload = text.into_bytes();
    let mut extra = String::new();
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&payload)?;
        payload = enc.finish()?;
        extra.push_str("Content-Encoding: gzip\r\n");
    }
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        payload.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&payload).await?;
    sock.shutdown().await
}

/// A token for the current end of the log.
fn issue(s: &mut State) -> String {
    let end = s.log.len();
    s.tokens.push(end);
    format!("ct-{}", s.tokens.len() - 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn answer(
    st: &Arc<Mutex<State>>,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, &'static str, String) {
    let mut s = st.lock().unwrap();
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let continuation = json
        .as_ref()
        .and_then(|j| j["continuation"].as_str())
        .map(str::to_owned);
    s.seen.push(Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: headers.clone(),
        continuation: continuation.clone(),
    });
    if let Some(f) = s.faults.pop_front() {
        return match f {
            Fault::Status(code) => (code, "text/html", "<html>error</html>".into()),
            Fault::Malformed => (
                200,
                "text/html",
                "<html><body>Before you continue to YouTube</body></html>".into(),
            ),
        };
    }
    if path.starts_with("/youtubei/v1/live_chat/get_live_chat") {
        if method != "POST" || !path.contains(&format!("key={API_KEY}")) {
            return (403, "application/json", r#"{"error":{"code":403}}"#.into());
        }
        let position = continuation
            .as_deref()
            .and_then(|c| c.strip_prefix("ct-"))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| s.tokens.get(n).copied());
        let Some(position) = position else {
            return (
                400,
                "application/json",
                r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#.into(),
            );
        };
        if s.ended {
            return (200, "application/json", CHAT_ENDED.to_owned());
        }
        let from = if s.repeat {
            position.saturating_sub(1)
        } else {
            position
        };
        let actions: Vec<Value> = s.log[from..].to_vec();
        let token = issue(&mut s);
        let text = CHAT
            .replace("__VIDEO__", &s.video_id)
            .replace("__TIMEOUT__", &s.timeout_ms.to_string())
            .replace("__CONTINUATION__", &token)
            .replace("__ACTIONS__", &Value::Array(actions).to_string());
        return (200, "application/json", text);
    }
    let channel_live = format!("/channel/{}/live", s.channel_id);
    let watch = format!("/watch?v={}", s.video_id);
    if path == channel_live && !s.live {
        let text = CHANNEL_OFFLINE
            .replace("__API_KEY__", API_KEY)
            .replace("__VISITOR__", VISITOR)
            .replace("__CHANNEL__", &s.channel_id);
        return (200, "text/html; charset=utf-8", text);
    }
    if path == channel_live || path == watch {
        // A fresh page starts chat from now: earlier actions are not replayed.
        let token = issue(&mut s);
        let bar = if s.live {
            CONVERSATION.replace("__CONTINUATION__", &token)
        } else {
            "null".to_owned()
        };
        let text = WATCH
            .replace("__API_KEY__", API_KEY)
            .replace("__VISITOR__", VISITOR)
            .replace("__VIDEO__", &s.video_id)
            .replace("__CHANNEL__", &s.channel_id)
            .replace("__TITLE__", "Lockstep fake stream")
            .replace("__IS_LIVE__", if s.live { "true" } else { "false" })
            .replace("__CONVERSATION_BAR__", bar.trim());
        return (200, "text/html; charset=utf-8", text);
    }
    if path.starts_with("/youtubei/v1/browse") {
        if method != "POST" || !path.contains(&format!("key={API_KEY}")) {
            return (403, "application/json", r#"{"error":{"code":403}}"#.into());
        }
        // Tokens are `plc-<offset>-<list>`.
        let page = continuation
            .as_deref()
            .and_then(|c| c.strip_prefix("plc-"))
            .and_then(|c| c.split_once('-'))
            .and_then(|(offset, list)| Some((offset.parse::<usize>().ok()?, list)))
            .and_then(|(offset, list)| {
                let (_, videos) = s.playlists.get(list)?;
                Some(playlist_items(&s.videos, list, videos, offset))
            });
        return match page {
            Some(items) => (
                200,
                "application/json",
                BROWSE
                    .replace("__ITEMS__", &items)
                    .replace("__VISITOR__", VISITOR),
            ),
            None => (
                400,
                "application/json",
                r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#.into(),
            ),
        };
    }
    if let Some(id) = path.strip_prefix("/playlist?list=") {
        let text = match s.playlists.get(id) {
            Some((title, videos)) => {
                let items = playlist_items(&s.videos, id, videos, 0);
                PLAYLIST
                    .replace("__ITEMS__", &items)
                    .replace("__TITLE_JSON__", &Value::from(title.as_str()).to_string())
                    .replace("__TITLE_HTML__", &html_escape(title))
                    .replace("__LIST__", id)
            }
            None => PLAYLIST_MISSING.to_owned(),
        };
        let text = text
            .replace("__API_KEY__", API_KEY)
            .replace("__VISITOR__", VISITOR);
        return (200, "text/html; charset=utf-8", text);
    }
    if let Some(id) = path.strip_prefix("/watch?v=") {
        let text = match s.videos.get(id) {
            Some((title, length)) => WATCH_VIDEO
                .replace("__TITLE_JSON__", &Value::from(title.as_str()).to_string())
                .replace("__TITLE_HTML__", &html_escape(title))
                .replace("__LENGTH__", &length.to_string()),
            None => WATCH_UNAVAILABLE.to_owned(),
        };
        let text = text
            .replace("__API_KEY__", API_KEY)
            .replace("__VISITOR__", VISITOR)
            .replace("__VIDEO__", id)
            .replace("__CHANNEL__", &s.channel_id);
        return (200, "text/html; charset=utf-8", text);
    }
    (404, "text/html", "<html>404</html>".into())
}

/// A JSON array of the playlist's videos from `offset` on, one page of them, ending with a
/// continuation when there are more.
fn playlist_items(
    known: &HashMap<String, (String, u64)>,
    list: &str,
    videos: &[String],
    offset: usize,
) -> String {
    let end = (offset + PLAYLIST_PAGE).min(videos.len());
    let mut items: Vec<String> = videos
        .get(offset..end)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| playlist_item(known, list, offset + i, v))
        .collect();
    if end < videos.len() {
        items.push(PLAYLIST_CONTINUATION.replace("__TOKEN__", &format!("plc-{end}-{list}")));
    }
    format!("[{}]", items.join(","))
}

/// One `playlistVideoRenderer`: a known video as it is, an unknown one as YouTube lists a
/// deleted video.
fn playlist_item(
    videos: &HashMap<String, (String, u64)>,
    list: &str,
    index: usize,
    video_id: &str,
) -> String {
    let (title, length, playable) = match videos.get(video_id) {
        Some((t, l)) => (t.as_str(), *l, true),
        None => ("[Deleted video]", 0, false),
    };
    PLAYLIST_ITEM
        .replace("__VIDEO__", video_id)
        .replace("__TITLE_JSON__", &Value::from(title).to_string())
        .replace("__INDEX__", &(index + 1).to_string())
        .replace("__INDEX0__", &index.to_string())
        .replace(
            "__LENGTH_TEXT__",
            &format!("{}:{:02}", length / 60, length % 60),
        )
        .replace("__LENGTH__", &length.to_string())
        .replace("__PLAYABLE__", if playable { "true" } else { "false" })
        .replace("__LIST__", list)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

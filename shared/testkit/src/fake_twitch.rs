//! A fake Twitch chat server speaking the real protocol: IRC lines over WebSocket text
//! frames (several lines per frame, `\r\n`-separated, as Twitch sends them), `CAP REQ` →
//! `CAP * ACK`, `NICK` → the 001–004/375/372/376 welcome, `JOIN` → the JOIN echo,
//! NAMES and ROOMSTATE, `PING` ↔ `PONG`, and on demand `RECONNECT`. Tests push chat lines
//! and read back what clients sent (JOIN times for the limiter, PONGs, PARTs).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

enum Out {
    Text(String),
    Close,
}

struct ConnState {
    tx: mpsc::UnboundedSender<Out>,
    nick: String,
    channels: HashSet<String>,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, ConnState>,
    next: u64,
    /// (time since start, connection, channel) of every JOIN received.
    joins: Vec<(Duration, u64, String)>,
    /// Every line any client sent, with its connection.
    received: Vec<(u64, String)>,
    /// Request headers of each WebSocket upgrade.
    upgrades: Vec<HashMap<String, String>>,
    /// Answer logins with something that is not IRC (a changed upstream).
    broken: bool,
}

/// A running fake; stops when dropped.
pub struct FakeTwitch {
    pub addr: SocketAddr,
    started: Instant,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwitch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTwitch {
    pub async fn start() -> FakeTwitch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let started = Instant::now();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move { serve(sock, st, started).await });
            }
        });
        FakeTwitch {
            addr,
            started,
            state,
            task,
        }
    }

    /// What `LOCKSTEP_INGEST__TWITCH__URL` takes.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Sends `line` to every connection that joined `channel`; returns how many.
    pub fn say(&self, channel: &str, line: &str) -> usize {
        let st = self.state.lock().unwrap();
        let mut n = 0;
        for c in st.conns.values() {
            if c.channels.contains(channel) && c.tx.send(Out::Text(line.to_owned())).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Sends raw text (e.g. garbage) to every open connection.
    pub fn broadcast_raw(&self, text: &str) {
        for c in self.state.lock().unwrap().conns.values() {
            let _ = c.tx.send(Out::Text(text.to_owned()));
        }
    }

    /// `:tmi.twitch.tv RECONNECT` to every connection, then closes them (what Twitch does
    /// before a server restart).
    pub fn reconnect_all(&self) {
        for c in self.state.lock().unwrap().conns.values() {
            let _ = c.tx.send(Out::Text(":tmi.twitch.tv RECONNECT".into()));
            let _ = c.tx.send(Out::Close);
        }
    }

    /// Every JOIN so far: (time since the fake started, connection id, channel).
    pub fn joins(&self) -> Vec<(Duration, u64, String)> {
        self.state.lock().unwrap().joins.clone()
    }

    /// Lines clients sent, with their connection ids.
    pub fn received(&self) -> Vec<(u64, String)> {
        self.state.lock().unwrap().received.clone()
    }

    /// While set, logins are answered with an HTML error page instead of the welcome.
    pub fn set_broken(&self, broken: bool) {
        self.state.lock().unwrap().broken = broken;
    }

    /// Connections accepted so far (open or not).
    pub fn connections_total(&self) -> u64 {
        self.state.lock().unwrap().next
    }

    /// Open connections and the channels each joined.
    pub fn open(&self) -> Vec<(u64, Vec<String>)> {
        let st = self.state.lock().unwrap();
        let mut v: Vec<(u64, Vec<String>)> = st
            .conns
            .iter()
            .map(|(id, c)| {
                let mut ch: Vec<String> = c.channels.iter().cloned().collect();
                ch.sort();
                (*id, ch)
            })
            .collect();
        v.sort();
        v
    }

    /// Headers of every upgrade request (lower-case names).
    pub fn upgrades(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().upgrades.clone()
    }

    /// Waits until some open connection has joined `channel` (after `after` JOINs of it).
    pub async fn wait_joined(&self, channel: &str, after: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            {
                let st = self.state.lock().unwrap();
                let joined = st.joins.iter().filter(|(_, _, c)| c == channel).count();
                let open = st.conns.values().any(|c| c.channels.contains(channel));
                if joined > after && open {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[allow(clippy::result_large_err)]
async fn serve(sock: tokio::net::TcpStream, st: Arc<Mutex<State>>, started: Instant) {
    let headers = Arc::new(Mutex::new(HashMap::new()));
    let h = headers.clone();
    let ws = tokio_tungstenite::accept_hdr_async(sock, move |req: &Request, resp: Response| {
        let mut map = h.lock().unwrap();
        for (k, v) in req.headers() {
            map.insert(
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_owned(),
            );
        }
        Ok(resp)
    })
    .await;
    let Ok(ws) = ws else { return };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut s = st.lock().unwrap();
        s.next += 1;
        let id = s.next;
        s.upgrades.push(headers.lock().unwrap().clone());
        s.conns.insert(
            id,
            ConnState {
                tx: tx.clone(),
                nick: String::new(),
                channels: HashSet::new(),
            },
        );
        id
    };
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Text(t) => {
                    if sink.send(Message::text(t)).await.is_err() {
                        return;
                    }
                }
                Out::Close => {
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        for line in text.as_str().split("\r\n").filter(|l| !l.is_empty()) {
            handle_line(&st, id, line, &tx, started);
        }
    }
    st.lock().unwrap().conns.remove(&id);
    drop(tx);
    let _ = writer.await;
}

fn handle_line(
    st: &Arc<Mutex<State>>,
    id: u64,
    line: &str,
    tx: &mpsc::UnboundedSender<Out>,
    started: Instant,
) {
    let mut s = st.lock().unwrap();
    s.received.push((id, line.to_owned()));
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "CAP" => {
            let caps = arg.split_once(':').map(|(_, c)| c).unwrap_or("");
            let _ = tx.send(Out::Text(format!(":tmi.twitch.tv CAP * ACK :{caps}")));
        }
        "PASS" => {}
        "NICK" if s.broken => {
            let _ = tx.send(Out::Text(
                "<html><body>502 Bad Gateway</body></html>".into(),
            ));
        }
        "NICK" => {
            let nick = arg.trim().to_owned();
            if let Some(c) = s.conns.get_mut(&id) {
                c.nick = nick.clone();
            }
            // Twitch sends the whole welcome in one frame.
            let welcome = [
                format!(":tmi.twitch.tv 001 {nick} :Welcome, GLHF!"),
                format!(":tmi.twitch.tv 002 {nick} :Your host is tmi.twitch.tv"),
                format!(":tmi.twitch.tv 003 {nick} :This server is rather new"),
                format!(":tmi.twitch.tv 004 {nick} :-"),
                format!(":tmi.twitch.tv 375 {nick} :-"),
                format!(
                    ":tmi.twitch.tv 372 {nick} :You are in a maze of twisty passages, all alike."
                ),
                format!(":tmi.twitch.tv 376 {nick} :>"),
            ]
            .join("\r\n");
            let _ = tx.send(Out::Text(welcome));
        }
        "JOIN" => {
            for ch in arg.split(',') {
                let ch = ch.trim().trim_start_matches('#').to_owned();
                let nick = s.conns.get(&id).map(|c| c.nick.clone()).unwrap_or_default();
                s.joins.push((started.elapsed(), id, ch.clone()));
                if let Some(c) = s.conns.get_mut(&id) {
                    c.channels.insert(ch.clone());
                }
                let reply = [
                    format!(":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{ch}"),
                    format!(":{nick}.tmi.twitch.tv 353 {nick} = #{ch} :{nick}"),
                    format!(":{nick}.tmi.twitch.tv 366 {nick} #{ch} :End of /NAMES list"),
                    format!("@emote-only=0;followers-only=-1;r9k=0;room-id=12345678;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #{ch}"),
                ]
                .join("\r\n");
                let _ = tx.send(Out::Text(reply));
            }
        }
        "PART" => {
            let ch = arg.trim().trim_start_matches('#').to_owned();
            if let Some(c) = s.conns.get_mut(&id) {
                c.channels.remove(&ch);
            }
        }
        "PING" => {
            let _ = tx.send(Out::Text(format!(
                ":tmi.twitch.tv PONG tmi.twitch.tv {arg}"
            )));
        }
        _ => {}
    }
}

//! The generator's WebSocket client (RFC 6455, client side): the opening handshake, a
//! cancel-safe frame reader and a masking writer, over a TCP stream split into owned halves.
//!
//! Written here because the generator shares the machine with the servers it measures, so its
//! cost per delivery is part of every figure: tungstenite zero-filled its read buffer on every
//! read, locked a mutex shared by the two halves of each socket and allocated per message.
//! The reader must be cancel-safe — clients read inside `select!` (storms, stop) — which
//! fastwebsockets' is not (it consumes a header before the payload arrives). Here bytes go
//! into the connection's buffer (`read_buf`, cancel-safe) and a frame leaves it only whole.
//! `wss://` runs the same over rustls (the TLS stream split in two halves).

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected stream to a gateway: plain TCP, or TLS over it (`https://` URLs).
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The receiving half of a [`Conn`].
enum ReadIo {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl ReadIo {
    /// Appends what has arrived; cancel-safe.
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            ReadIo::Plain(r) => r.read_buf(buf).await,
            ReadIo::Tls(r) => r.read_buf(buf).await,
        }
    }
}

/// The sending half of a [`Conn`].
enum WriteIo {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl WriteIo {
    /// Writes all of `bytes` onto the wire (TLS records are flushed, not left buffered).
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            WriteIo::Plain(w) => w.write_all(bytes).await,
            WriteIo::Tls(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            WriteIo::Plain(w) => w.shutdown().await,
            WriteIo::Tls(w) => w.shutdown().await,
        }
    }
}

/// Largest message accepted (a join's snapshot of a 5,000-member room is ≈ 350 KB).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Longest handshake response read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4 * 1024;
/// Largest read buffer kept while empty.
const KEEP_CAPACITY: usize = 64 * 1024;
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a connection failed; all end the client's socket.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake refused: {0}")]
    Handshake(String),
    #[error("protocol violation by the server: {0}")]
    Protocol(&'static str),
    #[error("message over {MAX_MESSAGE} bytes")]
    TooBig,
    #[error("connection closed without a close frame")]
    Eof,
}

/// A message or control frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(Bytes),
    Binary(Bytes),
    /// The close code, if the frame carried one.
    Close(Option<u16>),
    Ping(Bytes),
    Pong,
}

/// Opens the WebSocket on a connected stream: `host` for the Host header, `target` the
/// request target (path and query).
pub async fn connect(conn: Conn, host: &str, target: &str) -> Result<(Reader, Writer), WsError> {
    let (read, write, buf) = match conn {
        Conn::Plain(mut stream) => {
            let buf = handshake(&mut stream, host, target).await?;
            let (read, write) = stream.into_split();
            (ReadIo::Plain(read), WriteIo::Plain(write), buf)
        }
        Conn::Tls(mut stream) => {
            let buf = handshake(&mut *stream, host, target).await?;
            let (read, write) = tokio::io::split(*stream);
            (ReadIo::Tls(read), WriteIo::Tls(write), buf)
        }
    };
    Ok((
        Reader {
            io: read,
            framer: Framer { buf, partial: None },
        },
        Writer {
            io: write,
            mask_state: rand::random::<u64>() | 1,
            out: Vec::new(),
        },
    ))
}

/// The upgrade request and its answer; returns what arrived after the answer's head.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    target: &str,
) -> Result<BytesMut, WsError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(WsError::Handshake("response head too long".into()));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(WsError::Handshake("closed during the handshake".into()));
        }
    };
    check_response(&buf[..head_len], &key)?;
    buf.advance(head_len);
    Ok(buf)
}

/// Status 101 and the accept value the key calls for (RFC 6455 §4.1).
fn check_response(head: &[u8], key: &str) -> Result<(), WsError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(WsError::Handshake(status.to_owned()));
    }
    let accept = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_owned())
    });
    let expected = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{ACCEPT_GUID}").as_bytes()));
    if accept.as_deref() != Some(expected.as_str()) {
        return Err(WsError::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(())
}

/// The receiving half.
pub struct Reader {
    io: ReadIo,
    framer: Framer,
}

impl Reader {
    /// The next frame. Cancel-safe: dropped mid-way, no byte is lost.
    pub async fn next(&mut self) -> Result<Frame, WsError> {
        loop {
            if let Some(frame) = self.framer.take_frame()? {
                return Ok(frame);
            }
            // A big message (a join's snapshot) grew the buffer: let it go rather than keep
            // hundreds of KiB per idle client.
            if self.framer.buf.is_empty() && self.framer.buf.capacity() > KEEP_CAPACITY {
                self.framer.buf = BytesMut::new();
            }
            self.framer.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.framer.buf).await? == 0 {
                return Err(WsError::Eof);
            }
        }
    }
}

/// Bytes received but not yet framed, and a fragmented message being assembled.
#[derive(Default)]
struct Framer {
    buf: BytesMut,
    partial: Option<(u8, BytesMut)>,
}

impl Framer {
    /// A whole message or control frame from the buffer, if one has arrived.
    fn take_frame(&mut self) -> Result<Option<Frame>, WsError> {
        loop {
            let Some(head) = parse_head(&self.buf)? else {
                return Ok(None);
            };
            if self.buf.len() < head.len + head.payload {
                return Ok(None);
            }
            self.buf.advance(head.len);
            let payload = self.buf.split_to(head.payload);
            let frame = match (head.opcode, head.fin) {
                (0x0, fin) => {
                    let Some((_, acc)) = self.partial.as_mut() else {
                        return Err(WsError::Protocol("continuation without a message"));
                    };
                    if acc.len() + payload.len() > MAX_MESSAGE {
                        return Err(WsError::TooBig);
                    }
                    acc.extend_from_slice(&payload);
                    if !fin {
                        continue;
                    }
                    match self.partial.take() {
                        Some((op, acc)) => message(op, acc.freeze()),
                        None => continue,
                    }
                }
                (op @ (0x1 | 0x2), fin) => {
                    if self.partial.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    if !fin {
                        self.partial = Some((op, payload));
                        continue;
                    }
                    message(op, payload.freeze())
                }
                (0x8, _) => Frame::Close(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                ),
                (0x9, _) => Frame::Ping(payload.freeze()),
                (0xA, _) => Frame::Pong,
                _ => return Err(WsError::Protocol("unknown opcode")),
            };
            return Ok(Some(frame));
        }
    }
}

fn message(opcode: u8, payload: Bytes) -> Frame {
    if opcode == 0x1 {
        Frame::Text(payload)
    } else {
        Frame::Binary(payload)
    }
}

/// A frame header read off the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    fin: bool,
    opcode: u8,
    /// Header bytes.
    len: usize,
    payload: usize,
}

/// The header at the start of `buf`, once it has all arrived. Server frames are unmasked.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Protocol("masked server frame"));
    }
    let opcode = b0 & 0x0f;
    let (len, payload) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (4, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(n))
        }
        126 | 127 => return Ok(None),
        n => (2, u64::from(n)),
    };
    if opcode >= 0x8 && (payload > 125 || b0 & 0x80 == 0) {
        return Err(WsError::Protocol("bad control frame"));
    }
    let payload = usize::try_from(payload).map_err(|_| WsError::TooBig)?;
    if payload > MAX_MESSAGE {
        return Err(WsError::TooBig);
    }
    Ok(Some(Head {
        fin: b0 & 0x80 != 0,
        opcode,
        len,
        payload,
    }))
}

/// The sending half: every frame masked (RFC 6455 §5.3).
pub struct Writer {
    io: WriteIo,
    /// xorshift state for mask keys: a load generator's masks need no cryptographic quality.
    mask_state: u64,
    out: Vec<u8>,
}

impl Writer {
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(0x1, text.as_bytes()).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(0xA, payload).await
    }

    /// Sends a close frame and ends the sending direction.
    pub async fn close(&mut self, code: u16) -> Result<(), WsError> {
        self.send(0x8, &code.to_be_bytes()).await?;
        self.io.shutdown().await?;
        Ok(())
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 7;
        self.mask_state ^= self.mask_state << 17;
        let mask = (self.mask_state as u32).to_be_bytes();
        self.out.clear();
        encode_masked(&mut self.out, opcode, payload, mask);
        self.io.write_all(&self.out).await?;
        Ok(())
    }
}

/// Appends one final, masked frame.
fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;

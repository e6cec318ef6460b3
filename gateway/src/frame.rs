//! Client frames (RFC 6455 §5.2) parsed from a buffer the connection owns.
//!
//! fastwebsockets still performs the upgrade and formats every frame we send; reading is done
//! here because its reader allocates a fixed 8 KiB buffer per socket at the upgrade, 40 % of an
//! idle connection's memory. This parser works on whatever bytes have arrived, so the
//! connection can hold no buffer at all while the client is quiet.

use fastwebsockets::OpCode;

/// Longest client frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEAD: usize = 14;

/// A violation of the framing rules; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without an extension")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("client frames must be masked")]
    Unmasked,
    #[error("control frames must not be fragmented")]
    ControlFragmented,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("frame over the size limit")]
    TooBig,
}

/// One complete frame at the start of the buffer, its payload already unmasked in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub fin: bool,
    pub opcode: OpCode,
    /// Where the payload sits in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the frame took, header included: drop them before parsing the next one.
    pub consumed: usize,
}

/// What the buffer holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A whole frame.
    Frame(Parsed),
    /// Not yet: at least this many bytes in total are needed (a lower bound until the header
    /// is complete), so the reader can size its next read.
    Need(usize),
}

/// Parses the frame at the start of `buf`. Limits are checked as soon as the header is
/// complete, so an oversized frame is refused before its payload is buffered.
pub fn parse(buf: &mut [u8], max_payload: usize) -> Result<Progress, FrameError> {
    if buf.len() < 2 {
        return Ok(Progress::Need(2));
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let raw = b0 & 0x0f;
    let opcode = OpCode::try_from(raw).map_err(|_| FrameError::Opcode(raw))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && !fin {
        return Err(FrameError::ControlFragmented);
    }
    let (len_bytes, short) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(usize::from(n))),
    };
    let head = 2 + len_bytes + 4;
    if buf.len() < head {
        return Ok(Progress::Need(head));
    }
    let len = match short {
        Some(n) => n as u64,
        None => buf[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    };
    if control && len > 125 {
        return Err(FrameError::ControlTooLong);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    // Bounded by max_payload above, so this fits.
    let len = len as usize;
    let total = head + len;
    if buf.len() < total {
        return Ok(Progress::Need(total));
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[head - 4..head]);
    fastwebsockets::unmask(&mut buf[head..total], mask);
    Ok(Progress::Frame(Parsed {
        fin,
        opcode,
        payload: head..total,
        consumed: total,
    }))
}

/// The header of an unmasked server frame carrying `payload`, formatted by fastwebsockets;
/// the second value is its length.
pub fn head(opcode: OpCode, payload: &[u8]) -> ([u8; MAX_HEAD], usize) {
    let mut frame = fastwebsockets::Frame::new(
        true,
        opcode,
        None,
        fastwebsockets::Payload::Borrowed(payload),
    );
    let mut head = [0u8; MAX_HEAD];
    let n = frame.fmt_head(&mut head);
    (head, n)
}

/// Appends one unmasked server frame to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let (head, n) = head(opcode, payload);
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame with its code and reason.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &[u8]) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    encode(out, OpCode::Close, &payload);
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;

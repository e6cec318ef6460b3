//! The command mix: what each scheduled send is. `chat` messages carry the timing payload
//! (fan-out latency, loss, order); player commands move the room clock (sync error);
//! `queue` adds an entry, `ready` toggles the sender's ready flag. Every command's ack
//! latency is measured. Chosen deterministically from the message number, so runs repeat.

use serde::Serialize;

/// One kind of command in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Chat,
    Seek,
    Play,
    Pause,
    Queue,
    Ready,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "chat" => Kind::Chat,
            "seek" => Kind::Seek,
            "play" => Kind::Play,
            "pause" => Kind::Pause,
            "queue" => Kind::Queue,
            "ready" => Kind::Ready,
            _ => return None,
        })
    }

    /// Player commands change the clock: the room needs an entry and the owner sends them.
    pub fn is_control(self) -> bool {
        matches!(self, Kind::Seek | Kind::Play | Kind::Pause | Kind::Queue)
    }
}

/// Weights per kind, out of their sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mix {
    pub weights: Vec<(Kind, u32)>,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: vec![(Kind::Chat, 1)],
        }
    }
}

impl Mix {
    /// `chat=90,seek=4,pause=3,play=3` (weights, any scale).
    pub fn parse(text: &str) -> anyhow::Result<Mix> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, w) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("mix entry `{part}` is not kind=weight"))?;
            let kind = Kind::parse(k.trim()).ok_or_else(|| {
                anyhow::anyhow!("unknown mix kind `{k}` (chat, seek, play, pause, queue, ready)")
            })?;
            let w: u32 = w.trim().parse()?;
            if w > 0 {
                weights.push((kind, w));
            }
        }
        anyhow::ensure!(
            weights.iter().any(|(k, _)| *k == Kind::Chat),
            "the mix needs some chat (it carries the latency measurement)"
        );
        Ok(Mix { weights })
    }

    /// Whether the run measures sync error (some command moves the clock).
    pub fn moves_clock(&self) -> bool {
        self.weights.iter().any(|(k, _)| k.is_control())
    }

    /// The kind of message `k`: spread evenly by weight (a Bresenham-like walk).
    pub fn pick(&self, k: u64) -> Kind {
        let total: u64 = self.weights.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Kind::Chat;
        }
        // Multiply by a prime coprime with typical totals to interleave the kinds.
        let slot = (k.wrapping_mul(7_919)) % total;
        let mut acc = 0u64;
        for (kind, w) in &self.weights {
            acc += u64::from(*w);
            if slot < acc {
                return *kind;
            }
        }
        Kind::Chat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_spreads_by_weight() {
        let m = Mix::parse("chat=90, seek=5,pause=5").unwrap_or_default();
        assert!(m.moves_clock());
        let mut counts = std::collections::HashMap::new();
        for k in 0..1000 {
            *counts.entry(m.pick(k)).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&Kind::Chat), Some(&900));
        assert_eq!(counts.get(&Kind::Seek), Some(&50));
        assert!(Mix::parse("seek=1").is_err(), "chat is required");
        assert!(Mix::parse("chat=1,dance=2").is_err());
        assert!(!Mix::default().moves_clock());
    }
}

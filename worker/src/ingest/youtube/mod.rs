//! YouTube live chat: live detection from the watch/channel page, then InnerTube
//! `get_live_chat` continuation polling; and queued videos' titles and durations.

pub mod chat;
pub mod page;
pub mod playlist;
pub mod source;
pub mod video;

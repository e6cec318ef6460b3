//! Wire protocol v1: every frame that crosses the WebSocket, with its decoder.

pub mod bounds;
pub mod client;
pub mod error;
pub mod ext;
pub mod model;
pub mod nul;
pub mod server;

pub use client::{decode_client_frame, ClientCommand, ClientFrame, DecodeError, MAX_ID_LEN};
pub use error::ErrorCode;
pub use model::*;
pub use server::{ack_frame, error_frame, Event, EventBody};

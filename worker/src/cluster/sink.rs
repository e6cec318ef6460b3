//! The worker's [`GatewaySink`] in a cluster: each message goes to the channel of the
//! gateway it concerns; a room event (or head) only to the gateways holding members
//! (invariant 5).

use std::collections::BTreeMap;

use lockstep_shared::bus::{ConnId, GatewaySink, ToGateway};
use lockstep_shared::cluster::{gateway_channel, ToGatewayWire, ALL_GATEWAYS_CHANNEL};

use super::publisher::Publisher;

/// Publishes worker output to gateway channels.
pub struct RedisSink {
    publisher: Publisher,
}

impl RedisSink {
    pub fn new(publisher: Publisher) -> RedisSink {
        RedisSink { publisher }
    }

    fn send(&self, channel: String, msg: &ToGateway) {
        match serde_json::to_vec(&ToGatewayWire::Msg(msg.clone())) {
            Ok(payload) => self.publisher.publish(channel, payload),
            Err(e) => tracing::error!(cause = %e, "cannot encode a gateway message"),
        }
    }
}

fn by_gateway(conns: &[ConnId]) -> BTreeMap<u64, Vec<ConnId>> {
    let mut map: BTreeMap<u64, Vec<ConnId>> = BTreeMap::new();
    for c in conns {
        map.entry(c.gateway).or_default().push(*c);
    }
    map
}

impl GatewaySink for RedisSink {
    fn deliver(&self, msg: ToGateway) {
        match &msg {
            ToGateway::Reply { conn, .. } => self.send(gateway_channel(conn.gateway), &msg),
            ToGateway::Replay { gateway, .. } => self.send(gateway_channel(*gateway), &msg),
            ToGateway::RoomEvent { gateways, .. } | ToGateway::RoomHead { gateways, .. } => {
                if gateways.is_empty() {
                    return;
                }
                match serde_json::to_vec(&ToGatewayWire::Msg(msg.clone())) {
                    Ok(payload) => {
                        for g in gateways.iter() {
                            self.publisher.publish(gateway_channel(*g), payload.clone());
                        }
                    }
                    Err(e) => tracing::error!(cause = %e, "cannot encode a room event or head"),
                }
            }
            ToGateway::Direct { conns, frame } => {
                for (g, conns) in by_gateway(conns) {
                    let part = ToGateway::Direct {
                        conns,
                        frame: frame.clone(),
                    };
                    self.send(gateway_channel(g), &part);
                }
            }
            ToGateway::Evict { room, conns } => {
                for (g, conns) in by_gateway(conns) {
                    let part = ToGateway::Evict {
                        room: room.clone(),
                        conns,
                    };
                    self.send(gateway_channel(g), &part);
                }
            }
            ToGateway::Remove { room, conns, frame } => {
                for (g, conns) in by_gateway(conns) {
                    let part = ToGateway::Remove {
                        room: room.clone(),
                        conns,
                        frame: frame.clone(),
                    };
                    self.send(gateway_channel(g), &part);
                }
            }
            ToGateway::RoomReset { .. } => self.send(ALL_GATEWAYS_CHANNEL.to_owned(), &msg),
        }
    }
}

//! Cached RPC clients for the other chunk servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_common::net::RpcClient;

#[derive(Clone)]
pub struct Peers {
    ep: quinn::Endpoint,
    clients: Arc<Mutex<HashMap<String, Arc<RpcClient>>>>,
}

impl Peers {
    pub fn new(ep: quinn::Endpoint) -> Self {
        Peers { ep, clients: Default::default() }
    }

    pub fn get(&self, addr: &str) -> Arc<RpcClient> {
        self.clients
            .lock()
            .unwrap()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(RpcClient::new(self.ep.clone(), addr, 1, Duration::from_secs(30))))
            .clone()
    }
}

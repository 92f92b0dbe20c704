//! Sessions and the mutation entry point: at most once per (session, seq), one lock.

use super::*;

impl Namespace {
    /// A new session owned by `owner`.
    pub fn open_session(&self, owner: &SessionOwner, client: &str) -> Result<u64, WireError> {
        if client.len() > 255 {
            return Err(err(ErrorCode::InvalidArgument, "client name longer than 255 bytes"));
        }
        let (id, t) = {
            let mut c = self.lock.lock().unwrap();
            let id = c.next_session;
            c.next_session += 1;
            let mut b = Batch::default();
            b.put(Cf::Cluster, KEY_NEXT_SESSION.to_vec(), enc(&c.next_session));
            b.put(Cf::Sessions, session_key(id), enc(&SessionRec { owner: owner.clone(), client: client.to_string(), opened: now_ns() }));
            (id, self.store.apply(b)?)
        };
        self.store.wait_durable(t)?;
        Ok(id)
    }

    /// Apply `op` once for `(session, seq)` and return its reply when it is durable. Only the
    /// certificate that opened the session may use it.
    pub fn mutate(&self, owner: &SessionOwner, session: u64, seq: u64, op: Mutation) -> MetaResponse {
        match self.mutate_inner(owner, session, seq, op) {
            Ok(r) => r,
            Err(e) => MetaResponse::Error(e),
        }
    }

    /// Whether `(session, seq)` was applied already (its reply is in the retry cache).
    pub fn is_answered(&self, session: u64, seq: u64) -> bool {
        matches!(self.store.get(Cf::Sessions, &pair_key(session, seq)), Ok(Some(_)))
    }

    pub(super) fn check_session(&self, owner: &SessionOwner, session: u64) -> Result<(), WireError> {
        let unknown = || err(ErrorCode::UnknownSession, format!("unknown session {session}; open a new one"));
        let rec: SessionRec = dec(&self.store.get(Cf::Sessions, &session_key(session))?.ok_or_else(unknown)?)?;
        if rec.owner.fingerprint != owner.fingerprint {
            // Answered as unknown: a session is not a capability that another certificate can use.
            tracing::warn!(session, owner = %rec.owner.name, peer = %owner.name, "a session used by another certificate was refused");
            return Err(unknown());
        }
        Ok(())
    }

    pub(super) fn mutate_inner(&self, owner: &SessionOwner, session: u64, seq: u64, op: Mutation) -> Result<MetaResponse, WireError> {
        self.store.check_ok()?;
        let skey = pair_key(session, seq);
        let (reply, ticket) = {
            let mut c = self.lock.lock().unwrap();
            self.check_session(owner, session)?;
            if let Some(v) = self.store.get(Cf::Sessions, &skey)? {
                drop(c);
                // The original may still be on its way to disk: wait for everything written.
                self.store.wait_durable(self.store.apply(Batch::default())?)?;
                return dec(&v);
            }
            let is_create = matches!(op, Mutation::Create { .. });
            let cmd = Command { session, seq, now: now_ns(), new_ino: c.next_ino, op };
            let (mut batch, reply) = match self.execute(&cmd) {
                Ok(x) => x,
                Err(e) => (Batch::default(), MetaResponse::Error(e)),
            };
            if is_create && !matches!(reply, MetaResponse::Error(_)) {
                c.next_ino += 1;
                batch.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&c.next_ino));
            }
            batch.put(Cf::Sessions, skey, enc(&reply));
            if seq > RETRY_WINDOW {
                batch.delete(Cf::Sessions, pair_key(session, seq - RETRY_WINDOW));
            }
            let t = self.store.apply(batch)?;
            (reply, t)
        };
        self.store.wait_durable(ticket)?;
        Ok(reply)
    }
}

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
        if matches!(op, Mutation::ExpireSession { .. }) {
            return MetaResponse::Error(err(ErrorCode::PermissionDenied, "sessions are expired by the metadata server (CloseSession ends one's own)"));
        }
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
            // Open records are soft state that the next durable write covers: a crash that
            // loses one loses nothing the client relies on, unless the close also released
            // locks or an orphan (then it waits for the WAL sync like any change).
            let lazy = match &op {
                Mutation::Open { .. } => true,
                Mutation::Close { ino } => !self.close_releases(session, *ino)?,
                _ => false,
            };
            let cmd = Command { session, seq, now: now_ns(), new_ino: c.next_ino, op };
            let (mut batch, reply) = match self.execute(&cmd) {
                Ok(x) => x,
                Err(e) => (Batch::default(), MetaResponse::Error(e)),
            };
            if is_create && !matches!(reply, MetaResponse::Error(_)) {
                c.next_ino += 1;
                batch.put(Cf::Cluster, KEY_NEXT_INO.to_vec(), enc(&c.next_ino));
            }
            // A refused lock changed nothing: not stored, so that the waiting `F_SETLKW` that
            // sends it again is answered anew.
            if !matches!(&reply, MetaResponse::Error(e) if e.code == ErrorCode::WouldBlock) {
                batch.put(Cf::Sessions, skey, enc(&reply));
            }
            if seq > RETRY_WINDOW {
                batch.delete(Cf::Sessions, pair_key(session, seq - RETRY_WINDOW));
            }
            let t = self.store.apply(batch)?;
            (reply, (!lazy).then_some(t))
        };
        if let Some(t) = ticket {
            self.store.wait_durable(t)?;
        }
        Ok(reply)
    }

    /// The session exists and belongs to `owner` (a heartbeat).
    pub fn session_alive(&self, owner: &SessionOwner, session: u64) -> Result<(), WireError> {
        self.check_session(owner, session)
    }

    /// Expire `session` with the `ExpireSession` command, at time `now` (decided by the caller:
    /// apply reads no clock). Returns false if it did not exist.
    pub fn expire_session(&self, session: u64, now: i64) -> Result<bool, WireError> {
        self.store.check_ok()?;
        let ticket = {
            let c = self.lock.lock().unwrap();
            if self.store.get(Cf::Sessions, &session_key(session))?.is_none() {
                return Ok(false);
            }
            let cmd = Command { session, seq: 0, now, new_ino: c.next_ino, op: Mutation::ExpireSession { session } };
            let (batch, _) = self.execute(&cmd)?;
            self.store.apply(batch)?
        };
        self.store.wait_durable(ticket)?;
        Ok(true)
    }

    /// Every session, in id order, with what it holds.
    pub fn sessions(&self) -> Result<Vec<SessionInfo>, WireError> {
        let mut out = Vec::new();
        let mut start = session_key(0);
        // One seek per session: the stored replies between records are skipped.
        while let Some((k, v)) = self.store.scan(Cf::Sessions, b"", &start, 1)?.pop() {
            let id = u64::from_be_bytes(k[..8].try_into().map_err(|_| err(ErrorCode::Internal, "corrupt session key"))?);
            if k.len() == 8 {
                let rec: SessionRec = dec(&v)?;
                let open = self.open_by(id)?;
                let mut locks = 0;
                for ino in &open {
                    locks += locks::locks_of(&self.store, *ino)?.iter().filter(|h| h.session == id).count() as u64;
                }
                let orphans = opens::scan_all(&self.store, Cf::Orphans, &ino_key(id))?.len() as u64;
                out.push(SessionInfo { id, cert: rec.owner.name, client: rec.client, opened: rec.opened, open_files: open.len() as u64, orphans, locks });
            }
            match id.checked_add(1) {
                Some(n) => start = session_key(n),
                None => break,
            }
        }
        Ok(out)
    }
}

/// A session as `sessions` lists it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub cert: String,
    pub client: String,
    pub opened: i64,
    pub open_files: u64,
    pub orphans: u64,
    pub locks: u64,
}

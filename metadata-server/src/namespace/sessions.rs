//! Sessions and the mutation entry point: each forms its command and submits it.

use super::*;

impl Namespace {
    /// A new session owned by `owner`.
    pub fn open_session(&self, owner: &SessionOwner, client: &str) -> Result<u64, WireError> {
        match self.submit_durable(&Command::new(Op::OpenSession { owner: owner.clone(), client: client.to_string() }))? {
            Outcome::Session(id) => Ok(id),
            o => Err(err(ErrorCode::Internal, format!("OpenSession gave {o:?}"))),
        }
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
        let (open, close) = (matches!(op, Mutation::Open { .. }), matches!(op, Mutation::Close { .. }));
        let w = self.submit(&Command::new(Op::Mutate { owner: owner.clone(), session, seq, op }))?;
        // Open records are soft state that the next durable write covers: a crash that
        // loses one loses nothing the client relies on, unless the close also released
        // locks or an orphan (then it waits for the WAL sync like any change).
        match w.out {
            // An answer from the retry cache waits too: its original may still be on its way
            // to disk, and the ticket covers everything written before.
            Outcome::Reply { reply, again } => {
                if again {
                    // A retry after a lost reply or a failover (scripts/chaos counts these).
                    tracing::info!(session, seq, "a retried mutation was answered from the session table, not applied again");
                }
                if again || !(open || (close && w.soft)) {
                    self.store.wait_durable(w.ticket)?;
                }
                Ok(reply)
            }
            o => Err(err(ErrorCode::Internal, format!("Mutate gave {o:?}"))),
        }
    }

    /// The session exists and belongs to `owner` (a heartbeat).
    pub fn session_alive(&self, owner: &SessionOwner, session: u64) -> Result<(), WireError> {
        self.check_session(owner, session)
    }

    /// Expire `session` with the `ExpireSession` command, at time `now` (decided by the caller:
    /// apply reads no clock). Returns false if it did not exist.
    pub fn expire_session(&self, session: u64, now: i64) -> Result<bool, WireError> {
        self.store.check_ok()?;
        match self.submit_durable(&Command { now, op: Op::ExpireSession { session } })? {
            Outcome::Expired(existed) => Ok(existed),
            o => Err(err(ErrorCode::Internal, format!("ExpireSession gave {o:?}"))),
        }
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

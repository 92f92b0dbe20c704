//! POSIX ACLs in the kernel's `posix_acl_xattr` encoding, and how they and the permission bits
//! follow each other (what the kernel's `posix_acl_create_masq`, `posix_acl_chmod` and
//! `posix_acl_update_mode` do for local file systems; with FUSE's POSIX-ACL support the file
//! system does it). The kernel enforces the ACLs; the server keeps them consistent.

use super::*;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Acl(Vec<Entry>);

fn invalid(why: &str) -> WireError {
    err(ErrorCode::InvalidArgument, format!("invalid POSIX ACL: {why}"))
}

impl Acl {
    /// Decode and validate: one owner, owning-group and other entry each, a mask when there
    /// are named entries, permissions within rwx.
    pub(super) fn decode(v: &[u8]) -> Result<Acl, WireError> {
        if v.len() < 4 || (v.len() - 4) % 8 != 0 {
            return Err(invalid("bad length"));
        }
        if u32::from_le_bytes(v[..4].try_into().unwrap()) != VERSION {
            return Err(invalid("unknown version"));
        }
        let entries: Vec<Entry> = v[4..]
            .chunks_exact(8)
            .map(|c| Entry { tag: u16::from_le_bytes([c[0], c[1]]), perm: u16::from_le_bytes([c[2], c[3]]), id: u32::from_le_bytes(c[4..8].try_into().unwrap()) })
            .collect();
        let count = |t: u16| entries.iter().filter(|e| e.tag == t).count();
        if entries.iter().any(|e| e.perm > 7 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag)) {
            return Err(invalid("unknown tag or permission"));
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
            return Err(invalid("needs one owner, group and other entry, at most one mask"));
        }
        if count(USER) + count(GROUP) > 0 && count(MASK) == 0 {
            return Err(invalid("named entries need a mask"));
        }
        Ok(Acl(entries))
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Only the three entries the permission bits hold: nothing to store.
    pub(super) fn is_minimal(&self) -> bool {
        self.0.len() == 3
    }

    /// The entry that stands for the group class: the mask if there is one.
    fn group_class(&mut self) -> &mut Entry {
        let i = self.0.iter().position(|e| e.tag == MASK).or_else(|| self.0.iter().position(|e| e.tag == GROUP_OBJ)).expect("validated ACL");
        &mut self.0[i]
    }

    fn entry(&mut self, tag: u16) -> &mut Entry {
        self.0.iter_mut().find(|e| e.tag == tag).expect("validated ACL")
    }

    /// The permission bits (0777) this ACL gives; the special bits of `perm` are kept.
    pub(super) fn mode(&mut self, perm: u16) -> u16 {
        let (u, g, o) = (self.entry(USER_OBJ).perm, self.group_class().perm, self.entry(OTHER).perm);
        (perm & 0o7000) | u << 6 | g << 3 | o
    }

    /// `chmod`: the owner, group-class and other entries take the new bits.
    pub(super) fn chmod(&mut self, perm: u16) {
        self.entry(USER_OBJ).perm = (perm >> 6) & 7;
        self.group_class().perm = (perm >> 3) & 7;
        self.entry(OTHER).perm = perm & 7;
    }

    /// A new inode's access ACL from its parent's default ACL: each class is limited by the
    /// mode the creator asked for. Returns the new permission bits.
    pub(super) fn create_masq(&mut self, perm: u16) -> u16 {
        let (u, g, o) = ((perm >> 6) & 7, (perm >> 3) & 7, perm & 7);
        self.entry(USER_OBJ).perm &= u;
        self.group_class().perm &= g;
        self.entry(OTHER).perm &= o;
        self.mode(perm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl(entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect()).encode()
    }

    #[test]
    fn decode_validates() {
        let minimal = acl(&[(USER_OBJ, 6, u32::MAX), (GROUP_OBJ, 4, u32::MAX), (OTHER, 0, u32::MAX)]);
        assert!(Acl::decode(&minimal).unwrap().is_minimal());
        assert!(Acl::decode(&minimal[..10]).is_err());
        let no_mask = acl(&[(USER_OBJ, 6, u32::MAX), (USER, 7, 1000), (GROUP_OBJ, 4, u32::MAX), (OTHER, 0, u32::MAX)]);
        assert!(Acl::decode(&no_mask).is_err());
        let two_owners = acl(&[(USER_OBJ, 6, u32::MAX), (USER_OBJ, 6, u32::MAX), (GROUP_OBJ, 4, u32::MAX), (OTHER, 0, u32::MAX)]);
        assert!(Acl::decode(&two_owners).is_err());
        let bad_perm = acl(&[(USER_OBJ, 8, u32::MAX), (GROUP_OBJ, 4, u32::MAX), (OTHER, 0, u32::MAX)]);
        assert!(Acl::decode(&bad_perm).is_err());
    }

    #[test]
    fn mask_follows_chmod_and_creation() {
        let v = acl(&[(USER_OBJ, 7, u32::MAX), (USER, 7, 1000), (GROUP_OBJ, 5, u32::MAX), (MASK, 7, u32::MAX), (OTHER, 5, u32::MAX)]);
        let mut a = Acl::decode(&v).unwrap();
        assert_eq!(a.mode(0o4000), 0o4775);
        a.chmod(0o750);
        assert_eq!(a.mode(0), 0o750);
        // The mask, not the owning group's entry, took the group bits.
        assert_eq!(a.0[2].perm, 5);
        let mut inherited = Acl::decode(&v).unwrap();
        assert_eq!(inherited.create_masq(0o644), 0o644);
        assert_eq!(inherited.0[3].perm, 4);
    }
}

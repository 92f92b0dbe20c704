//! Model-based test: random sequences of namespace commands against an in-memory model; after
//! every step the namespace must agree with the model (entries, link counts, sizes, block maps,
//! reference counts, totals) and the reference audit must be clean. Seeded, so a failure
//! names a seed and a step that reproduce it.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const BS: u64 = 4096;

#[derive(Clone, Default)]
struct FileM {
    nlink: u32,
    size: u64,
    blocks: BTreeMap<u64, BlockRef>,
}

#[derive(Default)]
struct Model {
    kids: HashMap<u64, BTreeMap<Vec<u8>, u64>>,
    parent: HashMap<u64, u64>,
    files: HashMap<u64, FileM>,
}

impl Model {
    fn is_dir(&self, ino: u64) -> bool {
        self.kids.contains_key(&ino)
    }
    /// `x` is `d` or below it.
    fn under(&self, mut x: u64, d: u64) -> bool {
        loop {
            if x == d {
                return true;
            }
            if x == ROOT_INO {
                return false;
            }
            x = self.parent[&x];
        }
    }
    fn drop_link(&mut self, ino: u64) {
        let f = self.files.get_mut(&ino).unwrap();
        f.nlink -= 1;
        if f.nlink == 0 {
            self.files.remove(&ino);
        }
    }
    fn truncate(&mut self, ino: u64, size: u64) {
        let f = self.files.get_mut(&ino).unwrap();
        if size < f.size {
            f.blocks.retain(|i, _| *i < size.div_ceil(BS));
            if size % BS != 0 {
                if let Some(b) = f.blocks.get_mut(&(size / BS)) {
                    b.len = b.len.min((size % BS) as u32);
                }
            }
        }
        f.size = size;
    }
    /// Apply a block copy (`CopyBlocks`); false when it must be refused.
    fn copy(&mut self, (s, sf): (u64, u64), (d, df): (u64, u64), count: u64, end: u64) -> bool {
        let tail = end - (df + count - 1) * BS;
        let past_source = sf * BS + (end - df * BS) > self.files[&s].size;
        let cuts_destination = tail < BS && self.files[&d].size > end;
        if past_source || cuts_destination || (s == d && sf < df + count && df < sf + count) {
            return false;
        }
        let from: Vec<Option<BlockRef>> = (0..count).map(|i| self.files[&s].blocks.get(&(sf + i)).copied()).collect();
        let f = self.files.get_mut(&d).unwrap();
        for (i, b) in (df..).zip(from) {
            match b {
                Some(b) => f.blocks.insert(i, BlockRef { len: if i == df + count - 1 { b.len.min(tail as u32) } else { b.len }, ..b }),
                None => f.blocks.remove(&i),
            };
        }
        f.size = f.size.max(end);
        true
    }
    /// Apply a rename; false when it must be refused.
    fn rename(&mut self, (p1, n1): (u64, &[u8]), (p2, n2): (u64, &[u8]), flags: u32) -> bool {
        let Some(&s) = self.kids[&p1].get(n1) else { return false };
        let t = self.kids[&p2].get(n2).copied();
        if flags == RENAME_EXCHANGE {
            let Some(t) = t else { return false };
            if s == t {
                return true;
            }
            if p1 != p2 && ((self.is_dir(s) && self.under(p2, s)) || (self.is_dir(t) && self.under(p1, t))) {
                return false;
            }
            self.kids.get_mut(&p1).unwrap().insert(n1.to_vec(), t);
            self.kids.get_mut(&p2).unwrap().insert(n2.to_vec(), s);
            for (d, p) in [(s, p2), (t, p1)] {
                if self.is_dir(d) {
                    self.parent.insert(d, p);
                }
            }
            return true;
        }
        if (p1, n1) == (p2, n2) {
            return true;
        }
        if self.is_dir(s) && p1 != p2 && self.under(p2, s) {
            return false;
        }
        if let Some(t) = t {
            if flags == RENAME_NOREPLACE {
                return false;
            }
            if t == s {
                return true;
            }
            match (self.is_dir(s), self.is_dir(t)) {
                (true, true) if self.kids[&t].is_empty() => {
                    self.kids.remove(&t);
                    self.parent.remove(&t);
                }
                (false, false) => self.drop_link(t),
                _ => return false,
            }
        }
        self.kids.get_mut(&p1).unwrap().remove(n1);
        self.kids.get_mut(&p2).unwrap().insert(n2.to_vec(), s);
        if self.is_dir(s) {
            self.parent.insert(s, p2);
        }
        true
    }
}

fn check(ns: &Namespace, m: &Model, ctx: &str) {
    for (&d, kids) in &m.kids {
        let got: BTreeMap<Vec<u8>, u64> = ns.readdir(d, 0, 1000).unwrap().0.into_iter().map(|e| (e.name, e.ino)).collect();
        assert_eq!(&got, kids, "{ctx}: entries of {d}");
        let subdirs = kids.values().filter(|i| m.is_dir(**i)).count() as u32;
        assert_eq!(ns.getattr(d).unwrap().nlink, 2 + subdirs, "{ctx}: nlink of dir {d}");
    }
    let mut refs: HashMap<BlockId, u64> = HashMap::new();
    for (&ino, f) in &m.files {
        let a = ns.getattr(ino).unwrap();
        assert_eq!((a.nlink, a.size), (f.nlink, f.size), "{ctx}: file {ino}");
        let (_, map, _, _) = ns.get_blocks(ino, 0, 1000).unwrap();
        assert_eq!(map, f.blocks.iter().map(|(i, b)| (*i, *b)).collect::<Vec<_>>(), "{ctx}: block map of {ino}");
        for b in f.blocks.values() {
            *refs.entry(b.id).or_default() += 1;
        }
    }
    let stored: HashMap<BlockId, u64> = ns.list_blocks(None, 65536).unwrap().into_iter().collect();
    assert_eq!(stored, refs, "{ctx}: reference counts");
    let st = ns.stats().unwrap();
    assert_eq!(st.files, (m.kids.len() + m.files.len()) as u64, "{ctx}: file count");
    assert_eq!(st.logical_bytes, m.files.values().map(|f| f.size).sum::<u64>(), "{ctx}: logical bytes");
    assert_eq!(st.blocks, refs.len() as u64, "{ctx}: block count");
    let audit = ns.audit_refs().unwrap();
    assert!(audit.clean(), "{ctx}: {audit:?}");
}

fn run(seed: u64, steps: usize) {
    let d = tempfile::tempdir().unwrap();
    let ns = Namespace::open(Store::open(d.path()).unwrap(), FsParams { block_size: BS as u32 }).unwrap();
    let me = SessionOwner { name: "model".into(), fingerprint: [7; 32] };
    let session = ns.open_session(&me, "model").unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Model::default();
    m.kids.insert(ROOT_INO, BTreeMap::new());
    m.parent.insert(ROOT_INO, ROOT_INO);
    let names: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
    for step in 1..=steps as u64 {
        let dirs: Vec<u64> = { let mut v: Vec<u64> = m.kids.keys().copied().collect(); v.sort(); v };
        let files: Vec<u64> = { let mut v: Vec<u64> = m.files.keys().copied().collect(); v.sort(); v };
        let dir = |rng: &mut StdRng| dirs[rng.random_range(0..dirs.len())];
        let name = |rng: &mut StdRng| names[rng.random_range(0..names.len())].to_vec();
        let create = |parent, name: Vec<u8>, kind| Mutation::Create { parent, name, kind, perm: 0o644, uid: 0, gid: 0, rdev: 0, target: None, umask: 0 };
        let (op, expect_ok): (Mutation, bool) = match rng.random_range(0..11) {
            0 | 1 => {
                let (p, n) = (dir(&mut rng), name(&mut rng));
                let kind = if rng.random_bool(0.4) { FileKind::Dir } else { FileKind::File };
                let ok = !m.kids[&p].contains_key(&n);
                (create(p, n, kind), ok)
            }
            2 => {
                let (p, n) = (dir(&mut rng), name(&mut rng));
                let ok = m.kids[&p].get(&n).is_some_and(|i| !m.is_dir(*i));
                if ok {
                    let i = m.kids.get_mut(&p).unwrap().remove(&n).unwrap();
                    m.drop_link(i);
                }
                (Mutation::Unlink { parent: p, name: n, keep: false }, ok)
            }
            3 => {
                let (p, n) = (dir(&mut rng), name(&mut rng));
                let ok = m.kids[&p].get(&n).is_some_and(|i| m.kids.get(i).is_some_and(|k| k.is_empty()));
                if ok {
                    let i = m.kids.get_mut(&p).unwrap().remove(&n).unwrap();
                    m.kids.remove(&i);
                    m.parent.remove(&i);
                }
                (Mutation::Rmdir { parent: p, name: n }, ok)
            }
            4 | 5 => {
                let (p1, n1, p2, n2) = (dir(&mut rng), name(&mut rng), dir(&mut rng), name(&mut rng));
                let flags = [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE][rng.random_range(0..4)];
                let ok = m.rename((p1, &n1), (p2, &n2), flags);
                (Mutation::Rename { parent: p1, name: n1, new_parent: p2, new_name: n2, flags, keep: false }, ok)
            }
            6 if !files.is_empty() => {
                let (f, p, n) = (files[rng.random_range(0..files.len())], dir(&mut rng), name(&mut rng));
                let ok = !m.kids[&p].contains_key(&n);
                if ok {
                    m.kids.get_mut(&p).unwrap().insert(n.clone(), f);
                    m.files.get_mut(&f).unwrap().nlink += 1;
                }
                (Mutation::Link { ino: f, new_parent: p, new_name: n }, ok)
            }
            7 if !files.is_empty() => {
                let f = files[rng.random_range(0..files.len())];
                let size = rng.random_range(1..=4 * BS);
                let mut blocks = Vec::new();
                for idx in 0..size.div_ceil(BS) {
                    if rng.random_bool(0.5) {
                        blocks.push((idx, BlockRef { id: BlockId::of(&[rng.random_range(0..6u8)]), len: rng.random_range(1..=BS as u32) }));
                    }
                }
                m.truncate(f, size);
                m.files.get_mut(&f).unwrap().blocks.extend(blocks.iter().copied());
                (Mutation::CommitBlocks { ino: f, blocks, size }, true)
            }
            8 if !files.is_empty() => {
                let f = files[rng.random_range(0..files.len())];
                let size = rng.random_range(0..=4 * BS);
                m.truncate(f, size);
                (Mutation::SetAttr { ino: f, attr: SetAttr { size: Some(size), ..Default::default() } }, true)
            }
            9 | 10 if !files.is_empty() => {
                let (s, d) = (files[rng.random_range(0..files.len())], files[rng.random_range(0..files.len())]);
                let (src_first, dst_first, count) = (rng.random_range(0..4), rng.random_range(0..4), rng.random_range(1..=3));
                let end = (dst_first + count - 1) * BS + rng.random_range(1..=BS);
                let ok = m.copy((s, src_first), (d, dst_first), count, end);
                (Mutation::CopyBlocks { src: s, src_first, dst: d, dst_first, count, end }, ok)
            }
            _ => continue,
        };
        let ctx = format!("seed {seed} step {step} {op:?}");
        let kind = match &op {
            Mutation::Create { kind, .. } => Some(*kind),
            _ => None,
        };
        let (p, n) = match &op {
            Mutation::Create { parent, name, .. } => (*parent, name.clone()),
            _ => (0, vec![]),
        };
        let reply = ns.mutate(&me, session, step, op);
        assert_eq!(!matches!(reply, MetaResponse::Error(_)), expect_ok, "{ctx}: {reply:?}");
        if let (Some(kind), MetaResponse::Attr(a)) = (kind, &reply) {
            m.kids.get_mut(&p).unwrap().insert(n, a.ino);
            if kind == FileKind::Dir {
                m.kids.insert(a.ino, BTreeMap::new());
                m.parent.insert(a.ino, p);
            } else {
                m.files.insert(a.ino, FileM { nlink: 1, ..Default::default() });
            }
        }
        check(&ns, &m, &ctx);
    }
}

#[test]
fn random_commands_agree_with_a_model() {
    for seed in 1..=8 {
        run(seed, 300);
    }
}

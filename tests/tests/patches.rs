//! Small overwrites saved as patches (docs/design-notes.md, "Patches"): an `fdatasync` after a
//! 4 KiB write into a stored 4 MiB block sends the 4 KiB to the metadata server instead of
//! uploading the block again, and every reader (this mount, another mount, this mount after a
//! restart) reads the same bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use rand::Rng;
use tessera_tests::cluster::{drop_page_cache, write_file_synced};
use tessera_tests::*;

const MIB: usize = 1 << 20;

/// The value of one Prometheus series served on 127.0.0.1:`port` (0 while it is absent).
fn metric(port: u16, series: &str) -> f64 {
    scrape_value(port, series).unwrap_or(0.0)
}

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn synced_small_overwrites_upload_no_blocks_and_read_back_everywhere() {
    let meta_port = free_tcp_port();
    let c = ManualCluster::start_with(3, 3, &["--metrics", &format!("127.0.0.1:{meta_port}")], |_| vec![]);
    let (mnt, mnt_b) = (c.root().join("mnt"), c.root().join("mnt-b"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&mnt_b).unwrap();
    let port = free_tcp_port();
    let start_a = || start_mount_with(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"), &["--metrics", &format!("127.0.0.1:{port}")]);
    let mut a = start_a();

    // Two full blocks and a tail.
    let mut rng = seeded_rng();
    let mut want = random_bytes(&mut rng, 8 * MIB + 5000);
    let path = mnt.join("f");
    write_file_synced(&path, &want).unwrap();

    let puts = metric(port, "tessera_client_block_puts_total");
    let f = File::options().read(true).write(true).open(&path).unwrap();
    let writes = 100;
    for _ in 0..writes {
        let at = rng.random_range(0..want.len() - 4096);
        let data = random_bytes(&mut rng, 4096);
        f.write_all_at(&data, at as u64).unwrap();
        f.sync_data().unwrap();
        want[at..at + 4096].copy_from_slice(&data);
    }
    // One write across the boundary of blocks 0 and 1, and an append to the tail block.
    let data = random_bytes(&mut rng, 3000);
    f.write_all_at(&data, (4 * MIB - 1000) as u64).unwrap();
    f.sync_data().unwrap();
    want[4 * MIB - 1000..4 * MIB + 2000].copy_from_slice(&data);
    let tail = random_bytes(&mut rng, 3000);
    f.write_all_at(&tail, want.len() as u64).unwrap();
    f.sync_data().unwrap();
    want.extend_from_slice(&tail);
    let uploaded = metric(port, "tessera_client_block_puts_total") - puts;
    let patched = metric(meta_port, r#"tessera_rpc_requests_total{op="patch_blocks"}"#);
    // An entry takes 16 patches before it goes up whole again: about 102 / 16 uploads. Without
    // patches every sync uploads its block (or two): 102 or more.
    assert!(uploaded <= 15.0, "{uploaded} blocks uploaded for {writes} synced 4 KiB writes");
    assert!(patched >= 90.0, "{patched} patch commits for {writes} synced 4 KiB writes");
    drop(f);

    drop_page_cache();
    let got = read_all(&path);
    assert_eq!(first_difference(&got, &want), None, "read back on the writing mount");
    // Another mount, and the first one started again, read the same bytes.
    let mut b = start_mount(&c.meta_addr, &c.client, &mnt_b, &c.root().join("mount-b.log"));
    assert_eq!(first_difference(&read_all(&mnt_b.join("f")), &want), None, "read back on another mount");
    b.stop();
    a.stop();
    let mut a = start_a();
    assert_eq!(first_difference(&read_all(&path), &want), None, "read back after the mount restarted");
    a.stop();
    c.assert_fsck_clean();
}

#[test]
fn a_block_replaced_by_another_mount_is_not_patched_but_replaced_whole() {
    let c = DevCluster::start();
    let b = c.second_mount("b");
    let (fa, fb) = (c.path("f"), b.mountpoint.as_ref().unwrap().join("f"));
    let mut rng = seeded_rng();
    let old = random_bytes(&mut rng, 4 * MIB);
    write_file_synced(&fa, &old).unwrap();
    // A opens the file and reads the block; then B replaces it with other bytes.
    let f = File::options().read(true).write(true).open(&fa).unwrap();
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..], old[..16]);
    let theirs = random_bytes(&mut rng, 4 * MIB);
    write_file_synced(&fb, &theirs).unwrap();
    // A's small write is based on the old block: as a patch it would mix the two versions.
    f.write_all_at(b"A's small write", 100).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let mut want = old.clone();
    want[100..115].copy_from_slice(b"A's small write");
    assert_eq!(first_difference(&read_all(&fb), &want), None, "the last writer's whole block, as docs/consistency.md says");
    drop(b);
    c.assert_fsck_clean();
}

/// A file overwritten in place in 1 MiB writes has each block uploaded once, when the writing
/// reaches its end (each write used to upload the whole block again: four times per block).
#[test]
fn a_file_overwritten_in_place_in_large_writes_uploads_each_block_once() {
    let c = ManualCluster::start_with(3, 3, &[], |_| vec![]);
    let mnt = c.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let port = free_tcp_port();
    let mut a = start_mount_with(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"), &["--metrics", &format!("127.0.0.1:{port}")]);
    let mut rng = seeded_rng();
    let path = mnt.join("f");
    write_file_synced(&path, &random_bytes(&mut rng, 16 * MIB)).unwrap();

    let puts = metric(port, "tessera_client_block_puts_total");
    let want = random_bytes(&mut rng, 16 * MIB);
    let f = File::options().write(true).open(&path).unwrap();
    for (k, chunk) in want.chunks(MIB).enumerate() {
        f.write_all_at(chunk, (k * MIB) as u64).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let uploaded = metric(port, "tessera_client_block_puts_total") - puts;
    assert_eq!(uploaded, 4.0, "blocks uploaded for a 16 MiB file (4 blocks) overwritten in 16 writes of 1 MiB");
    drop_page_cache();
    assert_eq!(first_difference(&read_all(&path), &want), None, "read back as written");
    a.stop();
    c.assert_fsck_clean();
}

//! `tessera meta backup DIR`: copy a consistent checkpoint of the metadata server's database
//! into DIR (see `tessera_common::backup` for the layout), every file and directory fsynced.

use crate::admin::Admin;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera_common::backup::{self as layout, plain_name, Manifest, ManifestFile};
use tessera_common::durable;
use tessera_common::proto::meta::{BackupInfo, MetaRequest, MetaResponse, BACKUP_CHUNK};
use tokio::io::AsyncWriteExt;

pub struct BackupSummary {
    pub files: usize,
    pub bytes: u64,
    pub took: Duration,
    pub manifest: Manifest,
}

/// Refuse a DIR that exists and is not empty: a backup never mixes with other files.
fn check_target(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                bail!("{} exists and is not empty; back up into a new or empty directory", dir.display());
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => bail!("{} exists and is not a directory", dir.display()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

pub async fn backup(admin: &Admin, dir: &Path) -> anyhow::Result<BackupSummary> {
    let created = check_target(dir)?;
    let t = Instant::now();
    let info = match admin.call_payload(MetaRequest::BackupStart).await? {
        (MetaResponse::BackupStarted(i), _) => i,
        (r, _) => bail!("unexpected reply {r:?}"),
    };
    let taken = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let r = fetch(admin, &info, dir, taken).await;
    // The server's checkpoint goes in any case; a failed copy leaves nothing behind either.
    let _ = admin.call_payload(MetaRequest::BackupEnd { id: info.id }).await;
    match r {
        Ok(manifest) => {
            let bytes = manifest.files.iter().map(|f| f.size).sum();
            Ok(BackupSummary { files: manifest.files.len(), bytes, took: t.elapsed(), manifest })
        }
        Err(e) => {
            let _ = if created { std::fs::remove_dir_all(dir) } else { std::fs::remove_dir_all(dir.join(layout::DB_DIR)) };
            Err(e)
        }
    }
}

async fn fetch(admin: &Admin, info: &BackupInfo, dir: &Path, taken: u64) -> anyhow::Result<Manifest> {
    let db = dir.join(layout::DB_DIR);
    durable::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
    let mut files = Vec::new();
    for f in &info.files {
        if !plain_name(&f.name) {
            bail!("the metadata server listed a bad file name {:?}", f.name);
        }
        let path = db.join(&f.name);
        let blake3 = fetch_file(admin, info.id, &f.name, f.size, &path).await.with_context(|| format!("copying {}", f.name))?;
        files.push(ManifestFile { name: f.name.clone(), size: f.size, blake3 });
    }
    durable::sync_dir(&db)?;
    let manifest = Manifest {
        format: layout::FORMAT,
        created_unix: taken,
        created: tessera_common::utc_time(taken as i64),
        block_size: info.block_size,
        replicas: info.replicas,
        ring_version: info.ring_version,
        files,
    };
    manifest.write(dir).with_context(|| format!("writing the manifest in {}", dir.display()))?;
    // Read back as a restore will: what is on disk is what the server sent.
    layout::read_verified(dir)?;
    Ok(manifest)
}

/// Copy one checkpoint file to `path`, fsynced; returns its BLAKE3 (hex).
async fn fetch_file(admin: &Admin, id: u64, name: &str, size: u64, path: &PathBuf) -> anyhow::Result<String> {
    let mut out = tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(BACKUP_CHUNK as u64) as u32;
        let data = match admin.call_payload(MetaRequest::BackupRead { id, name: name.into(), offset, len }).await? {
            (MetaResponse::BackupData, d) => d,
            (r, _) => bail!("unexpected reply {r:?}"),
        };
        if data.is_empty() || data.len() > len as usize {
            bail!("the metadata server sent {} bytes at offset {offset} of {size}", data.len());
        }
        h.update(&data);
        out.write_all(&data).await?;
        offset += data.len() as u64;
    }
    out.sync_all().await?;
    Ok(h.finalize().to_hex().to_string())
}

//! `images::import`: an OCI image layout or a `docker save` archive turned
//! into a bootable, digest-pinned image. The host resolves and verifies
//! the source and copies the verified layer blobs onto a read-only disk;
//! a helper VM booted from `minimal` applies them onto a fresh ext4 disk
//! (`sandbox-unpack`); the host seals that disk as a standalone qcow2
//! image. No byte of a layer is interpreted by the host process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sandbox_rootfs::oci::{self, Digest, Platform, Resolved, Selector};
use sandbox_rootfs::{Image, ImageFormat, Qcow2Image, Qcow2Options, Rootfs};

use crate::{artifacts, BootOptions, Error, Resources, Sandbox};

/// Defaults of [`ImportOptions`].
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 4 << 30;
/// Default cap on the bytes all layers may decompress to.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Default bound on the helper VM's unpacking.
pub const DEFAULT_UNPACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How [`import`] selects and unpacks an image.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    selector: Selector,
    platform: Platform,
    max_image_bytes: u64,
    max_unpacked_bytes: u64,
    timeout: std::time::Duration,
    cache_dir: Option<PathBuf>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            selector: Selector::Only,
            platform: Platform::native(),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            timeout: DEFAULT_UNPACK_TIMEOUT,
            cache_dir: None,
        }
    }
}

impl ImportOptions {
    /// Selects the image by name: a `ref.name` annotation of an OCI layout
    /// or a repository tag of a `docker save` archive (`alpine:3.19`,
    /// `docker.io/library/alpine:3.19`). Default: the source's only image.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.selector = Selector::Name(name.into());
        self
    }

    /// Selects the image by the digest of its manifest (or of an index
    /// above it; for a legacy `docker save` archive, of its config):
    /// `sha256:<hex>`.
    pub fn digest(mut self, digest: &str) -> Result<Self, Error> {
        self.selector = Selector::Digest(Digest::parse(digest)?);
        Ok(self)
    }

    /// The platform, `os/arch[/variant]` (default: this build's, e.g.
    /// `linux/amd64`). Only the native one boots today.
    pub fn platform(mut self, platform: &str) -> Result<Self, Error> {
        self.platform = Platform::parse(platform)?;
        Ok(self)
    }

    /// Largest unpacked image (the ext4 disk the layers are applied to;
    /// sparse, so only what is used costs disk space). Default 4 GiB.
    pub fn max_image_bytes(mut self, bytes: u64) -> Self {
        self.max_image_bytes = bytes;
        self
    }

    /// Most bytes the layers may decompress to, all together (a
    /// decompression bomb stops here). Default 8 GiB.
    pub fn max_unpacked_bytes(mut self, bytes: u64) -> Self {
        self.max_unpacked_bytes = bytes;
        self
    }

    /// How long the helper VM may take to unpack (default 15 minutes;
    /// unpacking runs at tens of MB/s under UML).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where imported images are kept (default `<cache>/images`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }
}

/// Imports the image at `path`: an OCI image layout directory, a tar of
/// one, or a `docker save` archive. Cached by the image's digest (its
/// manifest's, or for a legacy archive its config's): a second import of
/// the same image returns the cached file without a VM.
pub async fn import(path: impl AsRef<Path>, opts: ImportOptions) -> Result<Image, Error> {
    let path = path.as_ref().to_path_buf();
    let (sel, plat) = (opts.selector.clone(), opts.platform.clone());
    let resolved = tokio::task::spawn_blocking(move || oci::resolve(&path, &sel, &plat))
        .await
        .map_err(|e| Error::Import(format!("resolving the image: {e}")))??;
    if resolved.platform.kernel_arch() != std::env::consts::ARCH {
        return Err(Error::Import(format!(
            "the image is for {}, and this build boots {} guests only",
            resolved.platform,
            Platform::native()
        )));
    }
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| artifacts::cache_dir().join("images"));
    let dir = cache.join(resolved.digest.hex());
    if let Some(image) = cached(&dir, &resolved) {
        log::info!(
            "image {} imported before: {}",
            resolved.digest,
            dir.display()
        );
        return Ok(image);
    }
    std::fs::create_dir_all(&cache).map_err(Error::io(format!("creating {}", cache.display())))?;
    sweep(&cache);
    let work = tempdir(&cache)?;
    let result = unpack_and_seal(&resolved, &opts, &cache, &work.0, &dir).await;
    drop(work);
    result
}

/// A work directory removed when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(cache: &Path) -> Result<WorkDir, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = cache.join(format!(
        "tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(Error::io(format!("creating {}", p.display())))?;
    Ok(WorkDir(p))
}

/// Removes the work directories of importing processes that are gone
/// (killed mid-import): `tmp-<pid>-<n>` whose pid does not exist.
fn sweep(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tmp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The image a previous import left in `dir`, if it is complete.
fn cached(dir: &Path, r: &Resolved) -> Option<Image> {
    let text = std::fs::read_to_string(dir.join("image.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    let path = dir.join("image.qcow2");
    let size = std::fs::metadata(&path).ok()?.len();
    (m["size"].as_u64()? == size).then_some(())?;
    Some(describe(r, path, m["sha256"].as_str()?.to_string(), size))
}

fn describe(r: &Resolved, path: PathBuf, sha256: String, size: u64) -> Image {
    let mut facts = BTreeMap::new();
    facts.insert("source".to_string(), "image".to_string());
    facts.insert("image.digest".to_string(), r.digest.to_string());
    if let Some(n) = r.names.first() {
        facts.insert("image.name".to_string(), n.clone());
    }
    Image {
        name: r
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| r.digest.to_string()),
        path,
        format: ImageFormat::Qcow2,
        arch: r.platform.kernel_arch().to_string(),
        sha256,
        size,
        facts,
        run: r.defaults.clone(),
    }
}

/// Copies every layer, verified, into one raw file (each at a 4 KiB
/// boundary); returns the file's image and each layer's `OFFSET:SIZE:HEX`.
fn blob_disk(r: &Resolved, path: &Path) -> Result<(Image, Vec<String>), Error> {
    /// Counts what passes.
    struct Counted<W> {
        out: W,
        n: u64,
    }
    impl<W: Write> Write for Counted<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let k = self.out.write(b)?;
            self.n += k as u64;
            Ok(k)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let io = Error::io(format!("writing {}", path.display()));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = Counted {
        out: std::io::BufWriter::with_capacity(1 << 20, file),
        n: 0,
    };
    let mut specs = Vec::new();
    let pad = |out: &mut Counted<_>| -> std::io::Result<()> {
        let rem = (4096 - out.n % 4096) % 4096;
        out.write_all(&vec![0u8; rem as usize])
    };
    for (i, l) in r.layers.iter().enumerate() {
        let offset = out.n;
        let what = format!("layer {}/{} ({})", i + 1, r.layers.len(), l.digest);
        let n = oci::copy_verified(&what, &l.location, &l.digest, &mut out)?;
        specs.push(format!("{offset}:{n}:{}", l.diff_id.hex()));
        pad(&mut out).map_err(Error::io(format!("writing {}", path.display())))?;
    }
    if out.n == 0 {
        pad(&mut out).map_err(Error::io(format!("writing {}", path.display())))?;
        out.write_all(&[0u8; 4096])
            .map_err(Error::io("writing the blob disk"))?;
    }
    out.flush().map_err(Error::io("writing the blob disk"))?;
    let sha256 = sandbox_rootfs::sha256_file(path).map_err(Error::io("hashing the blob disk"))?;
    let image = Image {
        name: "import-layers".into(),
        path: path.to_path_buf(),
        format: ImageFormat::Raw,
        arch: std::env::consts::ARCH.into(),
        sha256,
        size: out.n,
        facts: BTreeMap::new(),
        run: Default::default(),
    };
    Ok((image, specs))
}

/// An empty ext4 file system of `bytes` (sparse), made once per size and
/// kept in the cache with its digest.
fn empty_ext4(cache: &Path, bytes: u64) -> Result<Image, Error> {
    let path = cache.join(format!("empty-ext4-{bytes}.raw"));
    let meta = path.with_extension("json");
    let image = |sha256: String| Image {
        name: "empty-ext4".into(),
        path: path.clone(),
        format: ImageFormat::Raw,
        arch: std::env::consts::ARCH.into(),
        sha256,
        size: bytes,
        facts: BTreeMap::new(),
        run: Default::default(),
    };
    if let Ok(sha) = std::fs::read_to_string(&meta) {
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
            return Ok(image(sha.trim().to_string()));
        }
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let f =
        std::fs::File::create(&tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
    f.set_len(bytes)
        .map_err(Error::io("sizing the empty file system"))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "image", "-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,nodiscard", "-U", "clear"])
        .arg(&tmp)
        .output()
        .map_err(|e| Error::Import(format!("running mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(Error::Import(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let sha =
        sandbox_rootfs::sha256_file(&tmp).map_err(Error::io("hashing the empty file system"))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("storing the empty file system"))?;
    std::fs::write(&meta, &sha).map_err(Error::io("storing the empty file system's digest"))?;
    Ok(image(sha))
}

async fn unpack_and_seal(
    r: &Resolved,
    opts: &ImportOptions,
    cache: &Path,
    work: &Path,
    dir: &Path,
) -> Result<Image, Error> {
    let unpacker = artifacts::manifest_path("unpack", "the image unpacker (sandbox-unpack)")?;
    let t = std::time::Instant::now();
    let phase = |what: &str| log::info!("import {}: {what} after {:.2?}", r.digest, t.elapsed());
    let (blobs, specs) = {
        let (r2, p) = (r.clone(), work.join("layers.raw"));
        tokio::task::spawn_blocking(move || blob_disk(&r2, &p))
            .await
            .map_err(|e| Error::Import(format!("copying the layers: {e}")))??
    };
    phase(&format!("{} layers copied and verified", r.layers.len()));
    let base = {
        let (c, n) = (cache.to_path_buf(), opts.max_image_bytes);
        tokio::task::spawn_blocking(move || empty_ext4(&c, n))
            .await
            .map_err(|e| Error::Import(format!("making the file system: {e}")))??
    };
    let overlay = work.join("target.qcow2");
    let vm = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(crate::images::builtin("minimal")?))
        .disk(Rootfs::read_only(blobs))
        .disk(Rootfs::persistent(base, &overlay))
        .resources(Resources {
            cpus: 1,
            memory_mib: 512,
        })
        .build()?
        .boot(BootOptions::default())
        .await?;
    phase("helper VM booted");
    let result = run_unpacker(&vm, &unpacker, &specs, r, opts).await;
    let stopped = vm.shutdown().await;
    result?;
    stopped?;
    phase("layers unpacked");
    // Seal: the overlay over the empty file system, flattened into one
    // standalone qcow2 file, hashed, stored under the image's digest.
    let (sealed, overlay2) = (work.join("image.qcow2"), overlay.clone());
    let (sha256, size) = tokio::task::spawn_blocking(move || seal(&overlay2, &sealed))
        .await
        .map_err(|e| Error::Import(format!("sealing the image: {e}")))??;
    phase("image sealed");
    // Another process may have imported the same image meanwhile: its
    // file stays (a caller may hold its digest), ours is dropped.
    if let Some(image) = cached(dir, r) {
        return Ok(image);
    }
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    std::fs::rename(work.join("image.qcow2"), dir.join("image.qcow2"))
        .map_err(Error::io("storing the image"))?;
    let record = serde_json::json!({
        "digest": r.digest.to_string(),
        "config_digest": r.config_digest.to_string(),
        "platform": r.platform.to_string(),
        "names": r.names,
        "run": r.defaults,
        "sha256": sha256,
        "size": size,
    });
    std::fs::write(dir.join("image.json"), record.to_string())
        .map_err(Error::io("storing the image record"))?;
    Ok(describe(r, dir.join("image.qcow2"), sha256, size))
}

async fn run_unpacker(
    vm: &crate::Vm,
    unpacker: &Path,
    specs: &[String],
    r: &Resolved,
    opts: &ImportOptions,
) -> Result<(), Error> {
    let tool =
        std::fs::read(unpacker).map_err(Error::io(format!("reading {}", unpacker.display())))?;
    vm.fs()
        .write_file("/tmp/sandbox-unpack", &tool, Default::default())
        .await?;
    let step = |out: crate::Output, what: &str| -> Result<(), Error> {
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(Error::Import(format!("{what}: {}", err.trim())))
    };
    step(
        vm.exec(
            "sh",
            ["-c", "chmod 755 /tmp/sandbox-unpack && mkdir -p /mnt/target && mount -t ext4 /dev/vdc /mnt/target"],
        )
        .await?,
        "mounting the target disk",
    )?;
    let mut args = vec![
        "--source".to_string(),
        "/dev/vdb".into(),
        "--target".into(),
        "/mnt/target".into(),
        "--agent".into(),
        "/sbin/sandbox-guest".into(),
        "--max-bytes".into(),
        opts.max_unpacked_bytes.to_string(),
    ];
    if let Some(dir) = &r.defaults.working_dir {
        args.extend(["--mkdir".to_string(), dir.clone()]);
    }
    args.extend(specs.iter().cloned());
    let out = vm
        .command("/tmp/sandbox-unpack")
        .args(&args)
        .timeout(opts.timeout)
        .exec()
        .await?;
    log::info!("{}", String::from_utf8_lossy(&out.stdout).trim());
    if out.timed_out() {
        return Err(Error::Import(format!(
            "unpacking took longer than {:?} (ImportOptions::timeout)",
            opts.timeout
        )));
    }
    step(out, "unpacking the layers")?;
    step(
        vm.exec("sh", ["-c", "sync && umount /mnt/target"]).await?,
        "closing the target disk",
    )
}

fn seal(overlay: &Path, out: &Path) -> Result<(String, u64), Error> {
    let mut disk = Qcow2Image::open(overlay)?;
    let mut f =
        std::fs::File::create(out).map_err(Error::io(format!("creating {}", out.display())))?;
    sandbox_rootfs::flatten_qcow2(&mut disk, Qcow2Options::default(), &mut f)?;
    f.sync_all().map_err(Error::io("writing the image"))?;
    drop(f);
    let sha = sandbox_rootfs::sha256_file(out).map_err(Error::io("hashing the image"))?;
    let size = std::fs::metadata(out)
        .map_err(Error::io("reading the image"))?
        .len();
    Ok((sha, size))
}

//! Root file system write modes and image verification on real guests.

use sandbox_core::{images, BootOptions, Error, Rootfs, Sandbox};
use sandbox_rootfs::{sha256_file, RootfsError};

async fn boot(rootfs: Rootfs) -> sandbox_core::Vm {
    sandbox::boot_rootfs(rootfs).await.unwrap()
}

#[tokio::test]
async fn read_only_root_refuses_writes_but_tmp_works() {
    let image = images::builtin("minimal").unwrap();
    let vm = boot(Rootfs::read_only(image.clone())).await;
    let out = vm.exec("sh", ["-c", "echo x > /root/file"]).await.unwrap();
    assert_ne!(out.status.code, Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = vm
        .exec("sh", ["-c", "echo y > /tmp/f && cat /tmp/f"])
        .await
        .unwrap();
    assert_eq!(tmp.stdout, b"y\n");
    vm.shutdown().await.unwrap();
    assert_eq!(
        sha256_file(&image.path).unwrap(),
        image.sha256,
        "base untouched"
    );
}

#[tokio::test]
async fn ephemeral_writes_vanish_after_reboot_and_the_base_is_untouched() {
    let image = images::builtin("minimal").unwrap();
    let rootfs = Rootfs::ephemeral(image.clone());
    let vm = boot(rootfs.clone()).await;
    vm.exec("sh", ["-c", "echo kept > /root/file && sync"])
        .await
        .unwrap();
    assert_eq!(
        vm.exec("cat", ["/root/file"]).await.unwrap().stdout,
        b"kept\n"
    );
    vm.shutdown().await.unwrap();
    let again = boot(rootfs).await;
    let gone = again.exec("cat", ["/root/file"]).await.unwrap();
    assert_ne!(gone.status.code, Some(0), "the write did not survive");
    again.shutdown().await.unwrap();
    assert_eq!(sha256_file(&image.path).unwrap(), image.sha256);
}

#[tokio::test]
async fn exceeding_max_dirty_bytes_is_an_io_error_in_the_guest() {
    let image = images::builtin("minimal").unwrap();
    let vm = boot(Rootfs::ephemeral(image).max_dirty_bytes(4 << 20)).await;
    let mut events = vm.subscribe();
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "dd if=/dev/zero of=/root/big bs=1M count=32 conv=fsync 2>&1; echo rc=$?",
            ],
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("rc=0"), "the write must fail: {text}");
    // The host hears about it once.
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("an event within 5 s")
        .unwrap();
    assert_eq!(
        event,
        sandbox_core::VmEvent::Rootfs(sandbox_core::RootfsEvent::DirtyLimitReached {
            max_dirty_bytes: 4 << 20
        })
    );
    assert!(events.try_recv().is_err(), "reported once");
    // The guest's kernel log names the limit too.
    let log = vm.exec("dmesg", [""; 0]).await.unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("sandbox: the root disk's write budget is used up (max_dirty_bytes = 4 MiB)"),
        "{log}"
    );
    // The VM still answers.
    assert_eq!(vm.exec("echo", ["alive"]).await.unwrap().stdout, b"alive\n");
    drop(vm);
}

#[tokio::test]
async fn a_modified_image_is_refused_before_boot() {
    let image = images::builtin("minimal").unwrap();
    let copy = std::env::temp_dir().join(format!("sandbox-tampered-{}.ext4", std::process::id()));
    std::fs::copy(&image.path, &copy).unwrap();
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    let mut tampered = image.clone();
    tampered.path = copy.clone();
    let err = Sandbox::builder()
        .rootfs(Rootfs::read_only(tampered))
        .backend(sandbox::backend())
        .build()
        .unwrap()
        .boot(BootOptions::default())
        .await
        .unwrap_err();
    std::fs::remove_file(&copy).unwrap();
    match err {
        Error::Rootfs(RootfsError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, image.sha256)
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_compressed_qcow2_image_boots_read_only_and_ephemeral() {
    let raw = images::builtin("minimal").unwrap();
    let path = std::env::temp_dir().join(format!("sandbox-minimal-{}.qcow2", std::process::id()));
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-c"])
        .arg(&raw.path)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = sandbox_core::Image {
        name: "minimal-qcow2".into(),
        format: sandbox_core::ImageFormat::Qcow2,
        sha256: sha256_file(&path).unwrap(),
        size: std::fs::metadata(&path).unwrap().len(),
        path: path.clone(),
        ..raw
    };
    let vm = boot(Rootfs::read_only(image.clone())).await;
    let out = vm.exec("cat", ["/etc/os-release"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("sandbox minimal"));
    vm.shutdown().await.unwrap();
    let vm = boot(Rootfs::ephemeral(image.clone())).await;
    let out = vm
        .exec(
            "sh",
            [
                "-c",
                "echo w > /root/w && cat /root/w && md5sum /bin/busybox",
            ],
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("w\n"));
    vm.shutdown().await.unwrap();
    assert_eq!(
        sha256_file(&path).unwrap(),
        image.sha256,
        "the qcow2 base is never written"
    );
    std::fs::remove_file(&path).unwrap();
}

/// The library's in-memory store, plus injected write failures and a record
/// of the contexts it was called with.
struct MemStore {
    inner: sandbox_rootfs::MemStore,
    fail_writes: std::sync::atomic::AtomicBool,
    contexts: std::sync::Mutex<Vec<sandbox_rootfs::StoreContext>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            inner: sandbox_rootfs::MemStore::new(4096),
            fail_writes: Default::default(),
            contexts: Default::default(),
        }
    }
}

impl sandbox_rootfs::BlockStore for MemStore {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn list<'a>(
        &'a self,
        ctx: &'a sandbox_rootfs::StoreContext,
    ) -> futures::future::BoxFuture<'a, std::io::Result<Vec<u64>>> {
        self.contexts.lock().unwrap().push(ctx.clone());
        self.inner.list(ctx)
    }
    fn read<'a>(
        &'a self,
        ctx: &'a sandbox_rootfs::StoreContext,
        index: u64,
    ) -> futures::future::BoxFuture<'a, std::io::Result<bytes::Bytes>> {
        self.inner.read(ctx, index)
    }
    fn write<'a>(
        &'a self,
        ctx: &'a sandbox_rootfs::StoreContext,
        blocks: Vec<(u64, bytes::Bytes)>,
    ) -> futures::future::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::other("injected store failure"));
            }
            self.inner.write(ctx, blocks).await
        })
    }
    fn flush<'a>(
        &'a self,
        ctx: &'a sandbox_rootfs::StoreContext,
    ) -> futures::future::BoxFuture<'a, std::io::Result<()>> {
        self.inner.flush(ctx)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cow_writes_land_in_the_store_and_survive_reboot() {
    let image = images::builtin("minimal").unwrap();
    let store = std::sync::Arc::new(MemStore::default());
    let vm = boot(Rootfs::cow(image.clone(), store.clone())).await;
    let out = vm
        .exec("sh", ["-c", "echo durable > /root/kept && sync && echo ok"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"ok\n");
    assert!(!store.inner.is_empty(), "sync reached the store");
    vm.shutdown().await.unwrap();
    let again = boot(Rootfs::cow(image.clone(), store.clone())).await;
    let kept = again.exec("cat", ["/root/kept"]).await.unwrap();
    assert_eq!(kept.stdout, b"durable\n");
    again.shutdown().await.unwrap();
    let ctx = store.contexts.lock().unwrap()[0].clone();
    assert_eq!(
        (ctx.base_name, ctx.base_sha256),
        (image.name.clone(), image.sha256.clone())
    );
    assert_eq!(
        sha256_file(&image.path).unwrap(),
        image.sha256,
        "base untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_store_is_an_io_error_in_the_guest_and_an_event_on_the_host() {
    let image = images::builtin("minimal").unwrap();
    let store = std::sync::Arc::new(MemStore::default());
    let vm = boot(Rootfs::cow(image, store.clone())).await;
    // The store breaks after boot (a store that fails from the start cannot
    // even host the root mount: the guest's kernel panics with EIO on it).
    let stored = store.inner.len();
    store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut events = vm.subscribe();
    let out = vm
        .exec("sh", ["-c", "echo x > /root/f; sync; dd if=/dev/zero of=/root/g bs=4k count=4 conv=fsync 2>&1; echo rc=$?"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("rc=0"), "fsync must fail: {text}");
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert!(matches!(
        event,
        sandbox_core::VmEvent::Rootfs(sandbox_core::RootfsEvent::StoreFailed { .. })
    ));
    assert_eq!(store.inner.len(), stored, "nothing was stored");
    drop(vm);
}

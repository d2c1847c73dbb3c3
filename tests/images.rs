//! `images::import`: OCI layouts and `docker save` archives built here,
//! unpacked in a helper VM, booted, and checked from inside the guest; and
//! sources that are wrong or hostile, refused or contained.

use std::path::Path;

use sandbox::oci_fixture::{Layer, Scratch, Spec, Stored};
use sandbox_core::images::{self, ImportOptions, OciError};
use sandbox_core::{BootOptions, Error, Image, Sandbox, Vm};

/// Small unpacked images keep the tests fast.
fn opts(cache: &Path) -> ImportOptions {
    ImportOptions::default()
        .cache_dir(cache)
        .max_image_bytes(256 << 20)
}

/// The three-layer image whose properties the tests check.
fn three_layers(name: &str) -> Spec {
    let base = Layer::busybox()
        .file("etc/deleted", b"whited out later")
        .dir("data")
        .file("data/file", b"hard")
        .dir("data/opq")
        .file("data/opq/old", b"hidden by an opaque marker")
        .bytes();
    let middle = Layer::new()
        .file("etc/.wh.deleted", b"")
        .file("data/opq/.wh..wh..opq", b"")
        .file("data/opq/new", b"same layer, kept")
        .hardlink("data/hard", "data/file")
        .symlink("data/link", "/data/file")
        .file_with("data/suid", b"#!/bin/sh\n", 0o4755, 0)
        .file_with("data/owned", b"uid 1000", 0o640, 1000)
        .char_device("data/null", 1, 3)
        .xattr("user.origin", "layer2")
        .file("data/xattr", b"with an xattr")
        .bytes();
    let top = Layer::new().file("data/top", b"third layer").bytes();
    Spec::new(
        name,
        vec![
            (base, Stored::Plain),
            (middle, Stored::Gzip),
            (top, Stored::Gzip),
        ],
    )
}

async fn boot(image: Image) -> Vm {
    boot_root(
        sandbox_core::Rootfs::read_only(image),
        BootOptions::default(),
    )
    .await
}

async fn boot_root(rootfs: sandbox_core::Rootfs, options: BootOptions) -> Vm {
    Sandbox::builder()
        .rootfs(rootfs)
        .backend(sandbox::backend())
        .build()
        .unwrap()
        .boot(options)
        .await
        .unwrap()
}

async fn sh(vm: &Vm, script: &str) -> String {
    let out = vm.exec("/bin/sh", ["-c", script]).await.unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the image's `Entrypoint` and `Cmd` (`args` replacing `Cmd`), which
/// must succeed; returns its stdout.
async fn image_run(vm: &Vm, args: &[&str]) -> String {
    let out = vm.image_command(args).unwrap().exec().await.unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every property of [`three_layers`], from inside the guest.
async fn check_three_layers(vm: &Vm) {
    let out = vm.exec("/bin/cat", ["/etc/deleted"]).await.unwrap();
    assert!(!out.status.success(), "the whiteout removed /etc/deleted");
    assert_eq!(sh(vm, "ls /data/opq").await.trim(), "new");
    assert_eq!(sh(vm, "cat /data/top").await, "third layer");
    // A hardlink: one inode, two names.
    let inodes = sh(vm, "stat -c %i /data/file /data/hard").await;
    let inodes: Vec<&str> = inodes.lines().collect();
    assert_eq!(inodes.len(), 2);
    assert_eq!(inodes[0], inodes[1]);
    assert_eq!(sh(vm, "stat -c %h /data/file").await.trim(), "2");
    assert_eq!(sh(vm, "readlink /data/link").await.trim(), "/data/file");
    assert_eq!(sh(vm, "cat /data/link").await, "hard");
    assert_eq!(sh(vm, "stat -c %a /data/suid").await.trim(), "4755");
    assert_eq!(
        sh(vm, "stat -c '%u:%g %a' /data/owned").await.trim(),
        "1000:1000 640"
    );
    assert_eq!(
        sh(vm, "stat -c '%F %t:%T' /data/null").await.trim(),
        "character special file 1:3"
    );
    assert_eq!(sh(vm, "stat -c %Y /data/top").await.trim(), "1700000000");
}

#[tokio::test]
async fn an_oci_layout_imports_boots_and_keeps_layer_semantics() {
    let s = Scratch::new("layout");
    let layout = s.0.join("layout");
    let digest = three_layers("app:1").write_layout(&layout);
    let cache = s.0.join("cache");
    let image = images::import(&layout, opts(&cache).name("app:1"))
        .await
        .unwrap();
    eprintln!("[images] imported {} ({} bytes)", image.name, image.size);
    assert_eq!(image.facts["source"], "image");
    assert_eq!(image.facts["image.digest"], digest);
    let vm = boot(image.clone()).await;
    check_three_layers(&vm).await;
    // The agent runs as PID 1 of an image without it.
    assert_eq!(
        sh(&vm, "readlink /proc/1/exe").await.trim(),
        "/sbin/sandbox-guest"
    );
    vm.shutdown().await.unwrap();
    // xattrs: the image's busybox has no getfattr, so the image is read
    // as a data disk of a debian:12 guest, with python's os.getxattr.
    let reader = Sandbox::builder()
        .image(sandbox::builtin("debian:12"))
        .disk(sandbox_core::Rootfs::read_only(image.clone()))
        .backend(sandbox::backend())
        .build()
        .unwrap()
        .boot(BootOptions::default())
        .await
        .unwrap();
    let xattr = sh(
        &reader,
        "mkdir -p /tmp/img && mount -o ro /dev/vdb /tmp/img && \
         python3 -c \"import os; print(os.getxattr('/tmp/img/data/xattr', 'user.origin').decode())\"",
    )
    .await;
    assert_eq!(xattr, "layer2\n");
    reader.shutdown().await.unwrap();
    // A second import of the same image is a cache hit: the same file,
    // not rewritten.
    let mtime = std::fs::metadata(&image.path).unwrap().modified().unwrap();
    let again = images::import(&layout, opts(&cache)).await.unwrap();
    assert_eq!(again, image);
    assert_eq!(
        std::fs::metadata(&again.path).unwrap().modified().unwrap(),
        mtime
    );
    // Nothing is left of the work directories.
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_docker_save_archive_imports_and_boots() {
    let s = Scratch::new("docker");
    let tar = s.0.join("app.tar");
    let spec = three_layers("example/app:2");
    let config = spec.write_docker_archive(&tar);
    let image = images::import(&tar, opts(&s.0.join("cache")).name("example/app:2"))
        .await
        .unwrap();
    assert_eq!(image.facts["image.digest"], config);
    let vm = boot(image).await;
    check_three_layers(&vm).await;
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_layers_stay_inside_the_image() {
    let s = Scratch::new("hostile");
    let canary = std::env::temp_dir().join(format!("images-canary-{}", std::process::id()));
    std::fs::write(&canary, b"untouched").unwrap();
    let name = canary.file_name().unwrap().to_str().unwrap();
    let escape = Layer::new()
        .symlink("up", "../../../../../../..")
        .symlink("tmp-link", &canary.parent().unwrap().to_string_lossy())
        .bytes();
    let write = Layer::new()
        .file_with(
            &format!("../../../../../../../tmp/{name}"),
            b"dotdot",
            0o644,
            0,
        )
        .file_with(&format!("/tmp/{name}-abs"), b"absolute", 0o644, 0)
        .file_with(&format!("up/tmp/{name}-via-link"), b"via symlink", 0o644, 0)
        .file_with(
            &format!("tmp-link/{name}"),
            b"via absolute symlink",
            0o644,
            0,
        )
        .bytes();
    let spec = Spec::new(
        "hostile",
        vec![
            (Layer::busybox().bytes(), Stored::Plain),
            (escape, Stored::Plain),
            (write, Stored::Gzip),
        ],
    );
    let layout = s.0.join("layout");
    spec.write_layout(&layout);
    let image = images::import(&layout, opts(&s.0.join("cache")))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&canary).unwrap(), b"untouched");
    for suffix in ["-abs", "-via-link"] {
        assert!(!Path::new(&format!("/tmp/{name}{suffix}")).exists());
    }
    // What the layers wrote landed inside the image, under its own /tmp
    // (which the agent's tmpfs covers: a bind of / shows what is below).
    let vm = boot(image).await;
    let listing = sh(
        &vm,
        "mkdir -p /run/root && mount --bind / /run/root && ls /run/root/tmp",
    )
    .await;
    for suffix in ["-abs", "-via-link"] {
        assert!(listing.contains(&format!("{name}{suffix}")), "{listing}");
    }
    assert_eq!(
        sh(&vm, &format!("cat /run/root/tmp/{name}")).await,
        "via absolute symlink"
    );
    vm.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&canary);
}

#[tokio::test]
async fn bad_sources_are_refused_with_clear_errors() {
    let s = Scratch::new("bad");
    let cache = s.0.join("cache");
    // A blob that does not match its digest.
    let layout = s.0.join("tampered");
    let spec = Spec::new("t", vec![(Layer::busybox().bytes(), Stored::Plain)]);
    spec.write_layout(&layout);
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&biggest, &bytes).unwrap();
    let err = images::import(&layout, opts(&cache)).await.unwrap_err();
    assert!(
        matches!(err, Error::Oci(OciError::DigestMismatch { .. })),
        "{err}"
    );
    // A manifest pointing at a missing blob.
    std::fs::remove_file(&biggest).unwrap();
    let err = images::import(&layout, opts(&cache)).await.unwrap_err();
    assert!(matches!(err, Error::Oci(OciError::Missing(_))), "{err}");
    // Another platform.
    let arm = s.0.join("arm");
    let mut spec = Spec::new("arm", vec![(Layer::busybox().bytes(), Stored::Plain)]);
    spec.architecture = "arm64".into();
    spec.write_layout(&arm);
    let err = images::import(&arm, opts(&cache)).await.unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    // A decompression bomb: 64 MiB of zeros in a small gzip blob, against
    // an 8 MiB budget.
    let bomb = s.0.join("bomb");
    let zeros = Layer::new().file("zeros", &vec![0u8; 64 << 20]).bytes();
    Spec::new("bomb", vec![(zeros, Stored::Gzip)]).write_layout(&bomb);
    let err = images::import(&bomb, opts(&cache).max_unpacked_bytes(8 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Import(_)), "{err}");
    assert!(err.to_string().contains("max_unpacked_bytes"), "{err}");
    // A truncated gzip layer (the blob cut, its digest made to match, so
    // only the unpacker can tell).
    let cut = s.0.join("cut");
    let layer = Layer::new().file("f", &vec![7u8; 1 << 20]).bytes();
    Spec::new("cut", vec![(layer, Stored::Gzip)]).write_layout(&cut);
    truncate_gzip_blob(&cut);
    let err = images::import(&cut, opts(&cache)).await.unwrap_err();
    assert!(matches!(err, Error::Import(_)), "{err}");
    // Not an image at all.
    let junk = s.0.join("junk");
    std::fs::write(&junk, vec![1u8; 10_000]).unwrap();
    let err = images::import(&junk, opts(&cache)).await.unwrap_err();
    assert!(matches!(err, Error::Oci(_)), "{err}");
}

/// Cuts the gzip layer of the layout at `dir` in half and rewrites the
/// manifest and index so every digest matches again.
fn truncate_gzip_blob(dir: &Path) {
    use sandbox::oci_fixture::sha256;
    let blobs = dir.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&md)).unwrap()).unwrap();
    let ld = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let blob = std::fs::read(blobs.join(&ld)).unwrap();
    let cut = &blob[..blob.len() / 2];
    let cd = sha256(cut);
    std::fs::write(blobs.join(&cd), cut).unwrap();
    manifest["layers"][0]["digest"] = format!("sha256:{cd}").into();
    manifest["layers"][0]["size"] = cut.len().into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let nd = sha256(&mbytes);
    std::fs::write(blobs.join(&nd), &mbytes).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{nd}"), "size": mbytes.len()}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test]
async fn the_image_config_gives_exec_defaults_and_explicit_options_win() {
    let s = Scratch::new("config");
    let layout = s.0.join("layout");
    let mut spec = Spec::new(
        "cfg",
        vec![
            (
                Layer::busybox().dir("data").dir("work").bytes(),
                Stored::Plain,
            ),
            (
                Layer::new()
                    .file(
                        "etc/passwd",
                        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
                    )
                    .file(
                        "etc/group",
                        b"root:x:0:\napp:x:1001:\nextra:x:77:root,app\n",
                    )
                    .bytes(),
                Stored::Plain,
            ),
        ],
    );
    spec.config = serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=from-config", "EMPTY="],
        "WorkingDir": "/data",
        "User": "app",
        "Entrypoint": ["/bin/echo", "entry"],
        "Cmd": ["default-cmd"],
    });
    spec.write_layout(&layout);
    let image = images::import(&layout, opts(&s.0.join("cache")))
        .await
        .unwrap();
    assert_eq!(image.run.working_dir.as_deref(), Some("/data"));
    let vm = boot(image.clone()).await;
    // WorkingDir and Env are defaults of every command.
    assert_eq!(sh(&vm, "pwd; echo $GREETING").await, "/data\nfrom-config\n");
    // Explicit options win.
    let out = vm
        .command("/bin/sh")
        .args(["-c", "pwd; echo $GREETING"])
        .cwd("/work")
        .env("GREETING", "explicit")
        .exec()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"/work\nexplicit\n");
    // User: the image's by default (uid, primary and supplementary groups,
    // HOME from passwd), root or another user when asked.
    assert_eq!(
        sh(&vm, "id -u; id -g; id -G; echo $HOME").await,
        "1000\n1001\n1001 77\n/home/app\n"
    );
    let as_user = |user: &'static str| {
        vm.command("/bin/sh")
            .args(["-c", "id -u; id -G; echo $HOME"])
            .user(user)
    };
    let out = as_user("0").exec().await.unwrap();
    assert_eq!(out.stdout, b"0\n0 77\n/root\n");
    let out = as_user("4242:9").exec().await.unwrap();
    assert_eq!(out.stdout, b"4242\n9\n/\n");
    match as_user("ghost").exec().await {
        Err(Error::Spawn { message, .. }) => {
            assert!(
                message.contains("ghost") && message.contains("/etc/passwd"),
                "{message}"
            )
        }
        other => panic!("an unknown user must fail the spawn: {other:?}"),
    }
    let err = as_user("a:b:c").exec().await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    // Entrypoint and Cmd, and arguments replacing Cmd.
    assert_eq!(image_run(&vm, &[]).await, "entry default-cmd\n");
    assert_eq!(image_run(&vm, &["given"]).await, "entry given\n");
    vm.shutdown().await.unwrap();
    // A boot option's cwd wins over WorkingDir.
    let vm = boot_root(
        sandbox_core::Rootfs::read_only(image.clone()),
        BootOptions::default().cwd("/work"),
    )
    .await;
    assert_eq!(sh(&vm, "pwd").await, "/work\n");
    vm.shutdown().await.unwrap();
    // The sealed file, pinned by its digest, comes back with its config;
    // a wrong digest refuses.
    let pinned = Image::open(&image.path, &format!("sha256:{}", image.sha256)).unwrap();
    assert_eq!(pinned.run, image.run);
    assert_eq!(pinned.facts["source"], "image");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = Image::open(&image.path, &wrong).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
}

#[tokio::test]
async fn an_imported_image_boots_in_every_writable_root_mode() {
    use sandbox_core::Rootfs;
    let s = Scratch::new("modes");
    let layout = s.0.join("layout");
    let mut spec = Spec::new(
        "modes",
        vec![(Layer::busybox().dir("data").bytes(), Stored::Gzip)],
    );
    spec.config = serde_json::json!({ "WorkingDir": "/data" });
    spec.write_layout(&layout);
    let image = images::import(&layout, opts(&s.0.join("cache")))
        .await
        .unwrap();
    let persistent = s.0.join("persistent.qcow2");
    let store = std::sync::Arc::new(sandbox_rootfs::MemStore::new(64 << 10));
    for (mode, rootfs) in [
        ("ephemeral", Rootfs::ephemeral(image.clone())),
        ("cow", Rootfs::cow(image.clone(), store.clone())),
        ("persistent", Rootfs::persistent(image.clone(), &persistent)),
        (
            "persistent again",
            Rootfs::persistent(image.clone(), &persistent),
        ),
    ] {
        let vm = boot_root(rootfs, BootOptions::default()).await;
        let out = sh(
            &vm,
            "cat /data/kept 2>/dev/null; echo written > /data/kept; sync",
        )
        .await;
        eprintln!("[images] {mode}: {out:?}");
        let expect = if mode == "persistent again" {
            "written\n"
        } else {
            ""
        };
        assert_eq!(out, expect, "{mode}");
        vm.shutdown().await.unwrap();
    }
    // compose: the cow run's store over the image, booted read-only;
    // flatten: the same composition as a standalone qcow2 that boots as an
    // image and keeps the imported image's run defaults.
    let composed = Rootfs::compose(image.clone(), store.clone());
    let vm = boot_root(Rootfs::read_only(composed.clone()), BootOptions::default()).await;
    assert_eq!(sh(&vm, "cat /data/kept").await, "written\n", "compose");
    vm.shutdown().await.unwrap();
    let flat = sandbox_core::rootfs::flatten(
        composed,
        sandbox_core::rootfs::Qcow2Options::default(),
        std::sync::Arc::new(sandbox_rootfs::MemStore::new(1 << 20)),
    )
    .await
    .unwrap();
    let path = s.0.join("flat.qcow2");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut chunks = Box::pin(sandbox_core::rootfs::bytes(&flat, 256 << 10));
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        std::io::Write::write_all(&mut file, &chunk.unwrap()).unwrap();
    }
    drop(file);
    let flattened = Image {
        name: "flattened".into(),
        path,
        sha256: flat.sha256.clone(),
        size: flat.len,
        ..image.clone()
    };
    let vm = boot(flattened).await;
    assert_eq!(
        sh(&vm, "cat /data/kept; pwd").await,
        "written\n/data\n",
        "flatten"
    );
    vm.shutdown().await.unwrap();
}

/// A Dockerfile on `local/busybox` (see `sandbox::docker`) whose config
/// and layers the round trip checks: a user added to passwd, a file
/// deleted in a later layer (a real whiteout from Docker), ENV, WORKDIR,
/// USER and CMD.
const ROUND_TRIP_DOCKERFILE: &str = "FROM local/busybox\n\
RUN busybox mkdir -p /home/app && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo built > /www/built.txt\n\
RUN busybox rm /www/index.html\n\
ENV GREETING=from-docker\n\
WORKDIR /www\n\
USER app\n\
CMD [\"cat\", \"built.txt\"]\n";

#[tokio::test]
async fn a_docker_save_from_a_guest_imports_and_boots() {
    use sandbox_core::docker::Dockerd;
    use sandbox_core::fs::WriteOptions;
    let vm = sandbox::docker::boot_ephemeral(BootOptions::default()).await;
    let dockerd = Dockerd::start(&vm).await.unwrap();
    let fs = vm.fs();
    let mkdirs = WriteOptions {
        create_parents: true,
    };
    let tar = sandbox::docker::busybox_rootfs_tar().unwrap();
    fs.write_file("/tmp/busybox.tar", &tar, WriteOptions::default())
        .await
        .unwrap();
    fs.write_file(
        "/tmp/ctx/Dockerfile",
        ROUND_TRIP_DOCKERFILE.as_bytes(),
        mkdirs,
    )
    .await
    .unwrap();
    let out = vm
        .exec(
            "bash",
            [
                "-c",
                "set -e; docker import /tmp/busybox.tar local/busybox >/dev/null; \
                 docker build -q -t local/app /tmp/ctx >/dev/null; \
                 docker save -o /tmp/app.tar local/app; ls -l /tmp/app.tar",
            ],
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = fs.read_file("/tmp/app.tar").await.unwrap();
    dockerd.stop().await.unwrap();
    vm.shutdown().await.unwrap();

    let s = Scratch::new("roundtrip");
    let path = s.0.join("app.tar");
    std::fs::write(&path, &saved).unwrap();
    let image = images::import(&path, opts(&s.0.join("cache")).name("local/app"))
        .await
        .unwrap();
    eprintln!(
        "[images] docker save of {} bytes imported as {} ({:?})",
        saved.len(),
        image.name,
        image.run
    );
    let vm = boot(image).await;
    assert_eq!(
        sh(&vm, "pwd; id -u; echo $HOME $GREETING; ls /www").await,
        "/www\n1000\n/home/app from-docker\nbuilt.txt\n"
    );
    assert_eq!(image_run(&vm, &[]).await, "built\n");
    vm.shutdown().await.unwrap();
}

/// A distroless-style image: no shell and no `/bin`, a busybox under
/// `/app`, `/etc/resolv.conf` a dangling symlink into `/run` (as images
/// made for systemd-resolved have), no CA bundle. Booted read-only with a
/// network, the agent still starts, names the resolver and trusts its CA
/// through its own bundle.
#[tokio::test]
async fn a_distroless_image_boots_read_only_with_a_network() {
    use sandbox_core::net::{deny_all, NetworkOptions};
    use sandbox_core::Rootfs;
    let s = Scratch::new("distroless");
    let layout = s.0.join("layout");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut spec = Spec::new(
        "distroless",
        vec![(
            Layer::new()
                .dir("app")
                .file_with("app/busybox", &busybox, 0o755, 0)
                .dir("etc")
                .symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
                .bytes(),
            Stored::Gzip,
        )],
    );
    spec.config = serde_json::json!({ "Entrypoint": ["/app/busybox"] });
    spec.write_layout(&layout);
    let image = images::import(&layout, opts(&s.0.join("cache")))
        .await
        .unwrap();
    let vm = Sandbox::builder()
        .rootfs(Rootfs::read_only(image))
        .network(NetworkOptions::new(deny_all()))
        .backend(sandbox::backend())
        .build()
        .unwrap()
        .boot(BootOptions::default().hostname("distroless"))
        .await
        .unwrap();
    let run = |args: &'static [&'static str]| image_run(&vm, args);
    assert!(run(&["cat", "/etc/resolv.conf"])
        .await
        .contains("nameserver "));
    assert_eq!(run(&["cat", "/etc/hostname"]).await, "distroless\n");
    assert_eq!(
        run(&["test", "!", "-e", "/bin"]).await,
        "",
        "no /bin was made"
    );
    let env = run(&["env"]).await;
    let bundle = env
        .lines()
        .find_map(|l| l.strip_prefix("SSL_CERT_FILE="))
        .expect("SSL_CERT_FILE names the agent's bundle");
    assert!(run(&["cat", "/run/sandbox/ca-certificates.crt"])
        .await
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(bundle, "/run/sandbox/ca-certificates.crt");
    match vm.exec("sh", ["-c", "true"]).await {
        Err(Error::Spawn { errno, .. }) => assert_eq!(errno, 2),
        other => panic!("the image has no shell: {other:?}"),
    }
    vm.shutdown().await.unwrap();
}

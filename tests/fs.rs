//! `vm.fs()` against a real guest.

use std::os::unix::ffi::OsStrExt;

use sandbox::boot;
use sandbox_core::fs::{FileKind, WriteOptions};
use sandbox_core::{images, BootOptions, Error, Resources, Sandbox};
use tokio::io::AsyncReadExt;

fn errno(r: Result<impl std::fmt::Debug, Error>) -> i32 {
    match r {
        Err(Error::Fs { errno, .. }) => errno,
        other => panic!("expected a file system error, got {other:?}"),
    }
}

#[tokio::test]
async fn write_read_stat_and_ranges() {
    let vm = boot("fs").await.unwrap();
    let fs = vm.fs();
    let parents = WriteOptions {
        create_parents: true,
    };
    fs.write_file("/work/a/b/hello.txt", b"hello, guest", parents)
        .await
        .unwrap();
    let seen = vm.exec("cat", ["/work/a/b/hello.txt"]).await.unwrap();
    assert_eq!(seen.stdout, b"hello, guest");
    assert_eq!(
        fs.read_file("/work/a/b/hello.txt").await.unwrap(),
        b"hello, guest"
    );
    assert_eq!(
        fs.read_range("/work/a/b/hello.txt", 7, Some(3))
            .await
            .unwrap(),
        b"gue"
    );
    let st = fs.stat("/work/a/b/hello.txt").await.unwrap();
    assert_eq!((st.kind, st.size), (FileKind::File, 12));
    assert_eq!(fs.stat("/work/a").await.unwrap().kind, FileKind::Dir);
    // Truncate on rewrite; no parents without the option.
    fs.write_file("/work/a/b/hello.txt", b"x", WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(fs.read_file("/work/a/b/hello.txt").await.unwrap(), b"x");
    assert_eq!(
        errno(fs.write_file("/nope/x", b"", WriteOptions::default()).await),
        libc::ENOENT
    );
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn lstat_read_dir_and_raw_names() {
    let vm = boot("fsdir").await.unwrap();
    let fs = vm.fs();
    vm.exec(
        "sh",
        ["-c", "mkdir /d && echo 123 > /d/file && ln -s file /d/link && touch \"/d/$(printf 'bad\\377name')\""],
    )
    .await
    .unwrap();
    let link = fs.stat("/d/link").await.unwrap();
    assert_eq!(link.kind, FileKind::Symlink, "lstat does not follow");
    assert_eq!(link.link_target.as_deref(), Some(&b"file"[..]));
    let mut entries = fs.read_dir("/d").await.unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_bytes()).collect();
    assert_eq!(names, [&b"bad\xffname"[..], b"file", b"link"]);
    assert_eq!(entries[1].metadata.size, 4);
    assert_eq!(entries[2].metadata.kind, FileKind::Symlink);
    assert_eq!(errno(fs.read_dir("/d/file").await), libc::ENOTDIR);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn mkdir_remove_rename_and_errnos() {
    let vm = boot("fsops").await.unwrap();
    let fs = vm.fs();
    fs.mkdir("/m/n/o", true).await.unwrap();
    fs.mkdir("/m/n/o", true).await.unwrap();
    assert_eq!(errno(fs.mkdir("/m/n/o", false).await), libc::EEXIST);
    assert_eq!(errno(fs.mkdir("/x/y", false).await), libc::ENOENT);
    fs.write_file("/m/n/o/f", b"data", WriteOptions::default())
        .await
        .unwrap();
    fs.rename("/m/n/o/f", "/m/g").await.unwrap();
    assert_eq!(fs.read_file("/m/g").await.unwrap(), b"data");
    assert_eq!(
        errno(fs.rename("/m/g", "/no/such/dir/g").await),
        libc::ENOENT
    );
    assert_eq!(errno(fs.remove("/m", false, false).await), libc::ENOTEMPTY);
    fs.remove("/m", true, false).await.unwrap();
    assert_eq!(errno(fs.stat("/m").await), libc::ENOENT);
    assert_eq!(errno(fs.remove("/m", true, false).await), libc::ENOENT);
    fs.remove("/m", true, true).await.unwrap();
    assert!(matches!(
        fs.stat("relative").await,
        Err(Error::InvalidConfig(_))
    ));
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_256_mib_file_streams_both_ways_in_bounded_memory() {
    // /tmp is a tmpfs of half the guest's memory: give it room for 256 MiB.
    let vm = Sandbox::builder()
        .image(images::builtin("minimal").unwrap())
        .backend(sandbox::backend())
        .resources(Resources {
            cpus: 1,
            memory_mib: 1024,
        })
        .build()
        .unwrap()
        .boot(BootOptions::default())
        .await
        .unwrap();
    let fs = vm.fs();
    let size: u64 = 256 << 20;
    let before = sandbox::rss_bytes();
    assert!(before > 0, "VmRSS is readable");
    let source = tokio::io::repeat(0xa5).take(size);
    fs.write_from("/tmp/big", source, WriteOptions::default())
        .await
        .unwrap();
    let mut peak = sandbox::rss_bytes();
    assert_eq!(fs.stat("/tmp/big").await.unwrap().size, size);
    let mut reader = fs.open_read("/tmp/big", 0, None).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0xa5));
        got += n as u64;
        if got % (32 << 20) < n as u64 {
            peak = peak.max(sandbox::rss_bytes());
        }
    }
    reader.finish().await.unwrap();
    assert_eq!(got, size);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "256 MiB written and read; host RSS growth {} MiB",
        growth >> 20
    );
    assert!(growth < 64 << 20, "host RSS grew by {} MiB", growth >> 20);
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error() {
    let vm = boot("fsfull").await.unwrap();
    // The default guest has 256 MiB, so its /tmp holds 128 MiB.
    let source = tokio::io::repeat(0).take(200 << 20);
    let err = vm
        .fs()
        .write_from("/tmp/too-big", source, WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(errno(Err::<(), _>(err)), libc::ENOSPC);
    // The VM is fine afterwards.
    vm.fs().remove("/tmp/too-big", false, true).await.unwrap();
    assert_eq!(vm.exec("echo", ["ok"]).await.unwrap().stdout, b"ok\n");
    vm.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_too_large_for_a_frame_fails_at_once() {
    let vm = boot("fs-huge").await.unwrap();
    // A 2 MiB path cannot fit one protocol frame: the call fails promptly
    // with a clear error instead of waiting forever.
    let path = format!("/{}", "a".repeat(2 << 20));
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), vm.fs().stat(&path)).await;
    match r {
        Ok(Err(Error::Rejected(m))) => assert!(m.contains("frame"), "{m}"),
        other => panic!("expected a prompt rejection, got {other:?}"),
    }
    // The connection is unaffected.
    assert!(vm.fs().stat("/etc").await.is_ok());
    vm.shutdown().await.unwrap();
}

//! The built-in `debian:12` image boots and has the tools agents expect.

use sandbox_core::{BootOptions, FactSource, Rootfs, Sandbox};

#[tokio::test]
async fn debian_12_boots_with_its_tools() {
    let image = sandbox::builtin("debian:12");
    assert_eq!(
        image.facts.get("package_manager").map(String::as_str),
        Some("apt")
    );
    let sandbox = Sandbox::builder()
        .rootfs(Rootfs::ephemeral(image))
        .backend(sandbox::backend())
        .build()
        .unwrap();
    let vm = sandbox
        .boot(BootOptions::default().hostname("deb"))
        .await
        .unwrap();
    let os = vm.exec("cat", ["/etc/os-release"]).await.unwrap();
    assert!(String::from_utf8_lossy(&os.stdout).contains("bookworm"));
    let py = vm.exec("python3", ["-c", "print(6 * 7)"]).await.unwrap();
    assert_eq!(py.stdout, b"42\n");
    for tool in [
        "curl", "git", "jq", "ip", "iptables", "less", "ps", "apt-get",
    ] {
        let out = vm
            .exec("sh", ["-c", &format!("command -v {tool}")])
            .await
            .unwrap();
        assert_eq!(out.status.code, Some(0), "{tool} is installed");
    }
    let jq = vm
        .exec("sh", ["-c", "echo '{\"a\":[1,2,3]}' | jq '.a | add'"])
        .await
        .unwrap();
    assert_eq!(jq.stdout, b"6\n");
    let facts = vm.environment_facts().await.unwrap();
    assert!(facts.iter().any(|f| f.source == FactSource::Guest
        && f.topic == "distro"
        && f.value.contains("Debian GNU/Linux 12")));
    assert!(facts
        .iter()
        .any(|f| f.topic == "command" && f.relation == "present" && f.value == "apt-get"));
    let has = |topic: &str, relation: &str, value: &str| {
        facts
            .iter()
            .any(|f| f.topic == topic && f.relation == relation && f.value == value)
    };
    assert!(has("distro", "id", "debian"), "{facts:?}");
    assert!(has("distro", "version", "12"), "{facts:?}");
    assert!(has("package_manager", "is", "apt"), "{facts:?}");
    assert!(has("rootfs", "mounted", "rw"), "{facts:?}");

    // glibc resolves the guest's own name and localhost (sudo and friends
    // look their host up).
    let own = vm
        .exec(
            "python3",
            [
                "-c",
                "import socket; print(socket.gethostbyname(socket.gethostname()))",
            ],
        )
        .await
        .unwrap();
    assert_eq!(own.stdout, b"127.0.1.1\n", "{own:?}");
    let lh = vm.exec("getent", ["hosts", "localhost"]).await.unwrap();
    assert_eq!(lh.status.code, Some(0), "{lh:?}");

    // The default ephemeral root takes far more than the old 64 MiB RAM
    // budget (it spills to a sparse host file): 256 MiB, synced.
    let big = vm
        .exec(
            "sh",
            [
                "-c",
                "dd if=/dev/zero of=/var/tmp/big bs=1M count=256 conv=fsync 2>&1 && sync && \
                 stat -c %s /var/tmp/big",
            ],
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&big.stdout).ends_with("268435456\n"),
        "{}",
        String::from_utf8_lossy(&big.stdout)
    );
    vm.shutdown().await.unwrap();
}

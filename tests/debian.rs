//! The built-in `debian:12` image boots and has the tools agents expect.

use sandbox_core::{images, BootOptions, FactSource, Rootfs, Sandbox};

#[tokio::test]
async fn debian_12_boots_with_its_tools() {
    let image = images::builtin("debian:12").unwrap();
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
    vm.shutdown().await.unwrap();
}

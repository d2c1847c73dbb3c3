//! The host learns when the guest ends: `VmEvent::Stopped` arrives exactly
//! once with the reason (power-off or reboot inside the guest, a kernel
//! panic, a host shutdown, a drop), and by then the backend's host
//! processes are gone, without waiting for the `Vm` to be dropped.

use std::time::Duration;

use sandbox::{boot, guest_processes};
use sandbox_core::{StopReason, Vm, VmEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

async fn stopped(rx: &mut Receiver<VmEvent>) -> StopReason {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Ok(VmEvent::Stopped { reason })) => return reason,
            Ok(Ok(_)) => continue,
            other => panic!("no Stopped event: {other:?}"),
        }
    }
}

/// Runs `script` in the guest in the background (it ends the guest) and
/// returns the reported reason; the host processes are gone by then and
/// no second stop is reported.
async fn end_from_inside(vm: &Vm, script: &str) -> StopReason {
    let mut rx = vm.subscribe();
    let id = vm.id();
    // The guest may die before the exec completes: its result is either.
    let _ = vm
        .exec("sh", ["-c", &format!("({script}) >/dev/null 2>&1 &")])
        .await;
    let reason = stopped(&mut rx).await;
    assert!(
        guest_processes(&id).is_empty(),
        "host processes of {id} outlived the guest: {:?}",
        guest_processes(&id)
    );
    // Later calls fail at once with a clear error.
    let e = vm.exec("true", [] as [&str; 0]).await.unwrap_err();
    assert!(
        matches!(e, sandbox_core::Error::GuestStopped { .. }),
        "{e:?}"
    );
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    reason
}

#[tokio::test]
async fn a_power_off_inside_the_guest_is_reported_and_releases_the_host() {
    let vm = boot("stop-poweroff").await.unwrap();
    let reason = end_from_inside(&vm, "sleep 0.3; poweroff -f").await;
    assert_eq!(reason, StopReason::PowerOff);
}

#[tokio::test]
async fn a_reboot_inside_the_guest_ends_the_sandbox() {
    let vm = boot("stop-reboot").await.unwrap();
    let reason = end_from_inside(&vm, "sleep 0.3; reboot -f").await;
    assert_eq!(reason, StopReason::Reboot);
}

#[tokio::test]
async fn a_kernel_panic_is_reported_with_its_console_line() {
    let vm = boot("stop-panic").await.unwrap();
    let reason = end_from_inside(&vm, "sleep 0.3; echo c > /proc/sysrq-trigger").await;
    match reason {
        StopReason::Panic(line) => assert!(line.contains("sysrq"), "{line}"),
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_and_drop_are_reported_once() {
    let vm = boot("stop-shutdown").await.unwrap();
    let mut rx = vm.subscribe();
    vm.shutdown().await.unwrap();
    assert_eq!(stopped(&mut rx).await, StopReason::PowerOff);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(matches!(end, Ok(Err(RecvError::Closed))), "{end:?}");

    let vm = boot("stop-drop").await.unwrap();
    let mut rx = vm.subscribe();
    let id = vm.id();
    drop(vm);
    assert_eq!(stopped(&mut rx).await, StopReason::Killed);
    assert!(guest_processes(&id).is_empty());
}

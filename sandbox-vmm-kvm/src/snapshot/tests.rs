use super::*;

fn state() -> MachineState {
    MachineState {
        regions: vec![(0, 256 << 20)],
        features: CpuFeatures::of(&[], crate::CpuProfile::Full),
        vcpus: Vec::new(),
        vm: VmKvmState {
            irqchips: vec![kvm_irqchip::default(); 3],
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 123_456_789,
                ..Default::default()
            },
        },
        devices: Vec::new(),
        serial: SerialSnapshot::default(),
        disks: Vec::new(),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sbx-state-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state")
}

#[test]
fn a_state_file_round_trips() {
    let path = scratch("round");
    state().write(&path).unwrap();
    let back = MachineState::read(&path).unwrap();
    assert_eq!(back.regions, vec![(0, 256 << 20)]);
    assert_eq!(back.vm.clock.clock, 123_456_789);
    assert_eq!(back.vm.irqchips.len(), 3);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn truncated_changed_foreign_and_other_version_files_are_refused() {
    let path = scratch("bad");
    state().write(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let refuse = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        MachineState::read(&path).unwrap_err().to_string()
    };
    let e = refuse(&good[..good.len() - 10]);
    assert!(e.contains("truncated"), "{e}");
    let e = refuse(&good[..20]);
    assert!(e.contains("shorter than the header"), "{e}");
    let mut changed = good.clone();
    let last = changed.len() - 3;
    changed[last] ^= 1;
    let e = refuse(&changed);
    assert!(e.contains("checksum"), "{e}");
    let e = refuse(b"{\"not\": \"a snapshot\"} and some more bytes to pass the header length");
    assert!(e.contains("no snapshot header"), "{e}");
    let mut other = good.clone();
    other[8..12].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
    let e = refuse(&other);
    assert!(
        e.contains(&format!("state version is {}", STATE_VERSION + 1)),
        "{e}"
    );
    let mut huge = good.clone();
    huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = refuse(&huge);
    assert!(e.contains("claims"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Saves a vCPU set up by hand on this host's `/dev/kvm` and restores it
/// into a vCPU of another VM: registers, segments, the local APIC, MSRs
/// and the VM's clock and interrupt controllers come back.
#[test]
fn vcpu_and_vm_state_move_to_a_new_vm() {
    let Ok(kvm) = kvm_ioctls::Kvm::new() else {
        eprintln!("[skip] snapshot::vcpu_and_vm_state_move_to_a_new_vm: /dev/kvm cannot be opened");
        return;
    };
    let make = || {
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        (vm, vcpu)
    };
    let (vm, vcpu) = make();
    let mut regs = vcpu.get_regs().unwrap();
    (regs.rax, regs.rbx, regs.rip, regs.rflags) = (0x1111, 0x2222, 0xfff0, 0x2);
    vcpu.set_regs(&regs).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cr0 |= 1;
    vcpu.set_sregs(&sregs).unwrap();
    let index: Vec<u32> = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
    let saved = VcpuState::save(0, &vcpu, &index).unwrap();
    assert!(!saved.msrs.is_empty(), "some MSRs are readable");
    let vm_state = VmKvmState::save(&vm).unwrap();

    // Through the state file, as a restore in another process would.
    let path = scratch("kvm");
    let mut file_state = state();
    file_state.vcpus = vec![saved];
    file_state.vm = vm_state;
    file_state.write(&path).unwrap();
    let back = MachineState::read(&path).unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

    let (vm2, vcpu2) = make();
    back.vm.restore(&vm2).unwrap();
    back.vcpus[0].restore(&vcpu2).unwrap();
    let r = vcpu2.get_regs().unwrap();
    assert_eq!((r.rax, r.rbx, r.rip), (0x1111, 0x2222, 0xfff0));
    assert_eq!(vcpu2.get_sregs().unwrap().cr0 & 1, 1);
    assert_eq!(
        vcpu2.get_lapic().unwrap().regs[..],
        back.vcpus[0].lapic.regs[..]
    );
    let again = VcpuState::save(0, &vcpu2, &index).unwrap();
    assert_eq!(again.msrs.len(), back.vcpus[0].msrs.len());
    // The clock continues from the saved value, not from the new VM's zero.
    assert!(vm2.get_clock().unwrap().clock >= back.vm.clock.clock);
}

/// A state whose guest was given a CPU feature this host's KVM does not
/// offer is refused before any vCPU exists; this host's own features pass.
#[test]
fn a_restore_needing_features_this_host_lacks_is_refused() {
    let Ok(kvm) = kvm_ioctls::Kvm::new() else {
        eprintln!(
            "[skip] snapshot::a_restore_needing_features_this_host_lacks_is_refused: \
             /dev/kvm cannot be opened"
        );
        return;
    };
    for profile in [crate::CpuProfile::Full, crate::CpuProfile::NestedPvm] {
        let host = CpuFeatures::host(&kvm, profile).unwrap();
        assert_eq!(host.check(&host), Ok(()));
        let mut state = state();
        state.regions = vec![(0, 1 << 20)];
        state.features = host.clone();
        // A KVM paravirtual feature bit this host does not list (most of
        // that leaf's 32 bits are undefined).
        let leaf = state
            .features
            .leaves
            .iter_mut()
            .find(|l| l.function == 0x4000_0001)
            .unwrap();
        let bit = (0..32)
            .map(|b| 1u32 << b)
            .find(|b| leaf.regs[0] & b == 0)
            .expect("this host's KVM lists some paravirtual feature bits as absent");
        leaf.regs[0] |= bit;
        let memory = tempfile_of(1 << 20);
        let err = crate::KvmVm::restore(&state, memory, Vec::new(), 4096)
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(matches!(err, SnapshotError::Incompatible(_)), "{text}");
        assert!(
            text.contains(&format!("leaf 0x40000001.0 EAX bits {bit:#010x}")),
            "{text}"
        );
    }
}

fn tempfile_of(len: u64) -> std::fs::File {
    let path = scratch("features");
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(len).unwrap();
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    file
}

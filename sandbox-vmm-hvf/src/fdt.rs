//! The flattened device tree the arm64 guest boots with: memory, vCPUs
//! with PSCI, the GICv3, the architected timer, the PL011 console and one
//! node per virtio-mmio transport, in QEMU `virt`'s shape (node names,
//! addresses and interrupts), so that QEMU can boot with the same blob.

use vm_fdt::FdtWriter;

use crate::layout::{self, Layout};

/// The GIC's phandle.
const GIC_PHANDLE: u32 = 1;
/// The UART clock's phandle.
const CLOCK_PHANDLE: u32 = 2;
/// GIC interrupt specifier: shared or private peripheral interrupt.
const SPI: u32 = 0;
const PPI: u32 = 1;
/// GIC interrupt specifier flags.
const EDGE_RISING: u32 = 1;
const LEVEL_HIGH: u32 = 4;

/// What the device tree could not hold.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// The command line holds a NUL.
    #[error("the kernel command line holds a NUL byte")]
    Bootargs,
    /// The blob grew past Linux's 2 MiB limit.
    #[error("the device tree is {0} bytes; Linux takes at most 2 MiB")]
    TooBig(usize),
    /// vm-fdt refused a node or property.
    #[error("writing the device tree")]
    Write(#[from] vm_fdt::Error),
}

/// The device tree for `layout`, with `bootargs` in `/chosen`.
pub fn device_tree(layout: &Layout, bootargs: &str) -> Result<Vec<u8>, FdtError> {
    if bootargs.contains('\0') {
        return Err(FdtError::Bootargs);
    }
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", bootargs)?;
    fdt.property_string("stdout-path", &format!("/pl011@{:x}", layout::UART_BASE))?;
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{:x}", layout::RAM_BASE))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[layout::RAM_BASE, layout.ram_bytes()])?;
    fdt.end_node(memory)?;

    cpus(&mut fdt, layout)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec![
            "arm,psci-1.0".into(),
            "arm,psci-0.2".into(),
            "arm,psci".into(),
        ],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let gic = fdt.begin_node(&format!("intc@{:x}", layout::GICD_BASE))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // No child nodes (no ITS): interrupt maps address nothing in it.
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_array_u64(
        "reg",
        &[
            layout::GICD_BASE,
            layout::GICD_SIZE,
            layout::GICR_BASE,
            layout.gicr_size(),
        ],
    )?;
    fdt.property_u32("phandle", GIC_PHANDLE)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let ppis: Vec<u32> = layout::TIMER_PPIS
        .iter()
        .flat_map(|p| [PPI, *p, LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &ppis)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_u32("phandle", CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&format!("pl011@{:x}", layout::UART_BASE))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    fdt.property_array_u32("interrupts", &[SPI, layout::UART_SPI, LEVEL_HIGH])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.end_node(uart)?;

    for n in 0..layout.devices() {
        let Some((base, spi)) = layout.virtio(n) else {
            continue;
        };
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[base, layout::VIRTIO_STRIDE])?;
        fdt.property_array_u32("interrupts", &[SPI, spi, EDGE_RISING])?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > layout::FDT_MAX {
        return Err(FdtError::TooBig(blob.len()));
    }
    Ok(blob)
}

fn cpus(fdt: &mut FdtWriter, layout: &Layout) -> Result<(), vm_fdt::Error> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for cpu in 0..layout.cpus() {
        let mpidr = Layout::mpidr(cpu);
        let node = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_u32("reg", mpidr as u32)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(node)?;
    }
    fdt.end_node(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(p: fdt::node::NodeProperty<'_>) -> Vec<u32> {
        p.value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn the_tree_describes_the_machine() {
        let l = Layout::new(2, 512, 3).unwrap();
        let blob = device_tree(&l, "console=ttyAMA0 root=/dev/vda").unwrap();
        let t = fdt::Fdt::new(&blob).unwrap();
        assert_eq!(t.chosen().bootargs(), Some("console=ttyAMA0 root=/dev/vda"));
        assert_eq!(t.chosen().stdout().unwrap().name, "pl011@9000000");
        let mem: Vec<_> = t.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, 0x4000_0000);
        assert_eq!(mem[0].size, Some(512 << 20));
        let cpus: Vec<_> = t.cpus().map(|c| c.ids().first()).collect();
        assert_eq!(cpus, [0, 1]);
        for c in t.cpus() {
            assert_eq!(c.property("enable-method").unwrap().as_str(), Some("psci"));
        }
        let psci = t.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        let gic = t.find_compatible(&["arm,gic-v3"]).unwrap();
        let regs: Vec<_> = gic.reg().unwrap().collect();
        assert_eq!(regs[0].starting_address as u64, 0x0800_0000);
        assert_eq!(regs[1].starting_address as u64, 0x080A_0000);
        assert_eq!(regs[1].size, Some(2 * 0x2_0000));
        assert_eq!(t.find_phandle(GIC_PHANDLE).unwrap().name, gic.name);
        let timer = t.find_node("/timer").unwrap();
        assert_eq!(
            cells(timer.property("interrupts").unwrap()),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        let uart = t.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(cells(uart.property("interrupts").unwrap()), [0, 1, 4]);
        assert_eq!(t.find_phandle(CLOCK_PHANDLE).unwrap().name, "apb-pclk");
    }

    #[test]
    fn one_virtio_node_per_transport_with_its_spi() {
        let l = Layout::new(1, 256, 3).unwrap();
        let blob = device_tree(&l, "").unwrap();
        let t = fdt::Fdt::new(&blob).unwrap();
        let mut found = Vec::new();
        for node in t.all_nodes() {
            if node.compatible().map(|c| c.first()) == Some("virtio,mmio") {
                let reg = node.reg().unwrap().next().unwrap();
                let irq = cells(node.property("interrupts").unwrap());
                found.push((reg.starting_address as u64, reg.size, irq));
            }
        }
        assert_eq!(
            found,
            [
                (0x0A00_0000, Some(0x200), vec![0, 16, 1]),
                (0x0A00_0200, Some(0x200), vec![0, 17, 1]),
                (0x0A00_0400, Some(0x200), vec![0, 18, 1]),
            ]
        );
        let none = device_tree(&Layout::new(1, 256, 0).unwrap(), "").unwrap();
        let t = fdt::Fdt::new(&none).unwrap();
        assert!(t.find_compatible(&["virtio,mmio"]).is_none());
    }

    /// dtc (Debian's device-tree-compiler, which `cargo xtask` installs)
    /// reads the blob back and its checks (unit addresses against `reg`,
    /// cell counts, phandles, interrupt specifiers) find nothing to say.
    #[test]
    fn dtc_reads_the_blob_without_warnings() {
        let l = Layout::new(2, 512, 4).unwrap();
        let blob = device_tree(&l, "console=ttyAMA0").unwrap();
        let path = std::env::temp_dir().join(format!("hvf-fdt-{}.dtb", std::process::id()));
        std::fs::write(&path, &blob).unwrap();
        let out = std::process::Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-o", "-"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let out =
            out.expect("dtc is missing: apt-get install device-tree-compiler (cargo xtask deps)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
        let dts = String::from_utf8_lossy(&out.stdout);
        assert!(dts.contains("virtio_mmio@a000600 {"), "{dts}");
        assert!(dts.contains("interrupt-parent = <0x01>"), "{dts}");
    }

    #[test]
    fn a_nul_in_the_command_line_is_refused() {
        let l = Layout::new(1, 256, 0).unwrap();
        assert!(matches!(device_tree(&l, "a\0b"), Err(FdtError::Bootargs)));
    }

    #[test]
    fn the_largest_machine_fits_the_limit() {
        let l = Layout::new(layout::max_cpus(), 4096, layout::VIRTIO_MAX).unwrap();
        let blob = device_tree(&l, &"x".repeat(4096)).unwrap();
        assert!(blob.len() < 64 * 1024, "{} bytes", blob.len());
        assert_eq!(fdt::Fdt::new(&blob).unwrap().cpus().count(), 123);
    }
}

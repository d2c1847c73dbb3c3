//! A PL011 UART (Arm DDI 0183) as far as Linux's `amba-pl011` driver and
//! its early console use it: transmit through the data register with an
//! always-empty FIFO, a receive FIFO fed by the host, the interrupt mask and
//! status registers, and the PrimeCell ID registers the AMBA bus matches the
//! driver by. Registers are 32 bits wide; offsets outside the map read 0.

use std::collections::VecDeque;

const DR: u64 = 0x000;
const RSR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;
/// PeriphID0..3 then PCellID0..3, one byte per word from 0xFE0.
const ID_BASE: u64 = 0xfe0;
const IDS: [u32; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// FR: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// FR: transmit FIFO empty.
const FR_TXFE: u32 = 1 << 7;
/// Interrupt bits: receive, transmit, receive timeout.
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;
/// The eleven interrupt bits.
const INT_ALL: u32 = 0x7ff;
/// The hardware's receive FIFO depth; input past it waits in the host.
const FIFO: usize = 16;

/// The UART's state.
#[derive(Debug, Default)]
pub struct Pl011 {
    rx: VecDeque<u8>,
    raw: u32,
    mask: u32,
    regs: [u32; 6],
}

impl Pl011 {
    /// A UART after reset.
    pub fn new() -> Self {
        Self {
            // CR: UART, TX and RX enabled, as firmware leaves it.
            regs: [0, 0, 0, 0, 0x301, 0x12],
            ..Self::default()
        }
    }

    fn reg(&mut self, offset: u64) -> Option<&mut u32> {
        let i = match offset {
            ILPR => 0,
            IBRD => 1,
            FBRD => 2,
            LCR_H => 3,
            CR => 4,
            IFLS => 5,
            _ => return None,
        };
        self.regs.get_mut(i)
    }

    /// A guest load from `offset`.
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            DR => {
                let byte = self.rx.pop_front().map_or(0, u32::from);
                if self.rx.is_empty() {
                    self.raw &= !(INT_RX | INT_RT);
                }
                byte
            }
            FR => FR_TXFE | if self.rx.is_empty() { FR_RXFE } else { 0 },
            IMSC => self.mask,
            RIS => self.raw,
            MIS => self.raw & self.mask,
            RSR | ICR | DMACR => 0,
            o if (ID_BASE..ID_BASE + 32).contains(&o) && o % 4 == 0 => {
                IDS[((o - ID_BASE) / 4) as usize]
            }
            o => self.reg(o).map_or(0, |r| *r),
        }
    }

    /// A guest store of `value` to `offset`; returns the byte to transmit
    /// when the guest wrote the data register.
    pub fn write(&mut self, offset: u64, value: u32) -> Option<u8> {
        match offset {
            DR => {
                // The FIFO empties at once: the transmit interrupt stays
                // raised, as QEMU's does.
                self.raw |= INT_TX;
                return Some(value as u8);
            }
            IMSC => self.mask = value & INT_ALL,
            ICR => self.raw &= !value,
            o => {
                if let Some(r) = self.reg(o) {
                    *r = value;
                }
            }
        }
        None
    }

    /// Host input for the guest; returns how many bytes fitted in the FIFO
    /// (the caller keeps the rest for later).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(FIFO - self.rx.len());
        self.rx.extend(&bytes[..n]);
        if n > 0 {
            self.raw |= INT_RX;
        }
        n
    }

    /// The interrupt line: some unmasked interrupt is raised.
    pub fn irq(&self) -> bool {
        self.raw & self.mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primecell_ids_match_the_amba_driver() {
        let mut u = Pl011::new();
        let ids: Vec<u32> = (0..8).map(|i| u.read(0xfe0 + 4 * i)).collect();
        // amba-pl011 matches periphid 0x00041011 (ARM, part 0x011).
        let periph = ids[0] | ids[1] << 8 | ids[2] << 16 | ids[3] << 24;
        assert_eq!(periph & 0x000f_ffff, 0x0004_1011);
        assert_eq!(ids[4..], [0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(u.read(0xfe2), 0, "unaligned reads are not ID bytes");
    }

    #[test]
    fn transmit_is_immediate_and_raises_tx_when_unmasked() {
        let mut u = Pl011::new();
        assert_eq!(u.read(FR) & FR_TXFE, FR_TXFE);
        assert_eq!(u.write(DR, u32::from(b'h') | 0x700), Some(b'h'));
        assert!(!u.irq(), "masked");
        u.write(IMSC, INT_TX);
        assert!(u.irq());
        assert_eq!(u.read(MIS), INT_TX);
        u.write(ICR, INT_TX);
        assert!(!u.irq());
        assert_eq!(u.write(CR, 0x301), None);
        assert_eq!(u.read(CR), 0x301);
    }

    #[test]
    fn input_fills_the_fifo_and_drains_through_dr() {
        let mut u = Pl011::new();
        u.write(IMSC, INT_RX | INT_RT);
        assert_eq!(u.read(FR) & FR_RXFE, FR_RXFE);
        let long = [b'x'; 40];
        assert_eq!(u.push_input(&long), FIFO);
        assert_eq!(u.push_input(b"y"), 0);
        assert!(u.irq());
        assert_eq!(u.read(FR) & FR_RXFE, 0);
        for _ in 0..FIFO {
            assert_eq!(u.read(DR), u32::from(b'x'));
        }
        assert!(!u.irq(), "an empty FIFO drops the receive interrupt");
        assert_eq!(u.read(DR), 0);
        assert_eq!(u.read(0x999), 0);
        u.write(0x999, 5);
    }
}

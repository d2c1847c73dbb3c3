//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst)
//! and where the kernel is placed in guest RAM.

use crate::layout::{Layout, KERNEL_ALIGN, RAM_BASE};

/// "ARM\x64", at offset 56.
const MAGIC: u32 = 0x644d_5241;
/// The header is 64 bytes.
const HEADER_LEN: usize = 64;
/// Before Linux 3.17 `image_size` was 0 and the offset was this.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// Why a file is not a bootable arm64 `Image`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Big-endian kernel (flags bit 0).
    #[error("the kernel is big-endian; build a little-endian arm64 kernel")]
    BigEndian,
    /// The image does not fit in RAM with the device tree.
    #[error("the kernel needs {needed} bytes from the start of RAM, and {available} are free below the device tree; give the VM more memory")]
    TooBig {
        /// Bytes from RAM's start to the kernel's end.
        needed: u64,
        /// Bytes below the device tree.
        available: u64,
    },
    /// Shorter than a header, or without the magic.
    #[error("not an arm64 Linux Image (no \"ARM\\x64\" header); pass arch/arm64/boot/Image, not vmlinux or a compressed Image.gz")]
    NotImage,
}

/// The fields of an `Image` header that placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the image from a 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies once running, BSS included.
    pub image_size: u64,
    /// Bit 3: the kernel may be placed anywhere in RAM (2 MiB aligned).
    pub flags: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Reads the header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, ImageError> {
        let Some(h) = image.get(..HEADER_LEN) else {
            return Err(ImageError::NotImage);
        };
        if u32::from_le_bytes([h[56], h[57], h[58], h[59]]) != MAGIC {
            return Err(ImageError::NotImage);
        }
        let flags = le64(h, 24);
        if flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        let image_size = le64(h, 16);
        let text_offset = if image_size == 0 {
            LEGACY_TEXT_OFFSET
        } else {
            le64(h, 8)
        };
        Ok(Self {
            text_offset,
            // An old kernel does not say; its file length is a floor, and
            // the check against the device tree below stays conservative.
            image_size: image_size.max(image.len() as u64),
            flags,
        })
    }

    /// The guest address to copy the image to, checked to end below the
    /// device tree of `layout`.
    pub fn load_addr(&self, layout: &Layout) -> Result<u64, ImageError> {
        // RAM_BASE is 2 MiB aligned, so the base needs no rounding.
        let load = RAM_BASE + self.text_offset % KERNEL_ALIGN;
        let available = layout.fdt_addr() - RAM_BASE;
        let needed = (load - RAM_BASE).saturating_add(self.image_size);
        if needed > available {
            return Err(ImageError::TooBig { needed, available });
        }
        Ok(load)
    }
}

/// The boot CPU's registers at entry (booting.rst): x0 holds the device
/// tree's address, x1 to x3 are zero, the PC is the image's first byte, and
/// PSTATE is EL1h with all of D, A, I and F masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// PC.
    pub pc: u64,
    /// x0.
    pub x0: u64,
    /// PSTATE (CPSR).
    pub pstate: u64,
}

/// EL1h (SP_EL1) with DAIF set.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// Places `image` in a machine of `layout`: where to copy it, and the boot
/// CPU's entry state.
pub fn entry(image: &[u8], layout: &Layout) -> Result<Entry, ImageError> {
    let pc = Header::parse(image)?.load_addr(layout)?;
    Ok(Entry {
        pc,
        x0: layout.fdt_addr(),
        pstate: PSTATE_EL1H_MASKED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn a_modern_image_is_placed_at_its_text_offset() {
        let l = Layout::new(1, 256, 2).unwrap();
        let img = header(0, 30 << 20, 0b1010);
        let e = entry(&img, &l).unwrap();
        assert_eq!(e.pc, RAM_BASE);
        assert_eq!(e.x0, l.fdt_addr());
        assert_eq!(e.pstate, 0x3c5);
        let img = header(0x8_0000, 30 << 20, 0);
        assert_eq!(entry(&img, &l).unwrap().pc, RAM_BASE + 0x8_0000);
    }

    #[test]
    fn a_legacy_image_uses_the_old_offset() {
        let h = Header::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!(h.text_offset, 0x8_0000);
        assert_eq!(h.image_size, 4096);
    }

    #[test]
    fn malformed_images_are_refused_with_what_to_do() {
        assert_eq!(Header::parse(&[0u8; 63]), Err(ImageError::NotImage));
        assert_eq!(Header::parse(&[0u8; 4096]), Err(ImageError::NotImage));
        let elf = b"\x7fELF".repeat(32);
        assert_eq!(Header::parse(&elf), Err(ImageError::NotImage));
        assert_eq!(
            Header::parse(&header(0, 1 << 20, 1)),
            Err(ImageError::BigEndian)
        );
        assert!(ImageError::NotImage
            .to_string()
            .contains("arch/arm64/boot/Image"));
    }

    #[test]
    fn an_image_that_reaches_the_device_tree_is_refused() {
        let l = Layout::new(1, 64, 0).unwrap();
        let fits = header(0, 62 << 20, 0);
        assert!(entry(&fits, &l).is_ok());
        let big = header(0, (62 << 20) + 1, 0);
        assert!(matches!(entry(&big, &l), Err(ImageError::TooBig { .. })));
        let huge = header(u64::MAX, u64::MAX, 0);
        assert!(matches!(entry(&huge, &l), Err(ImageError::TooBig { .. })));
    }
}

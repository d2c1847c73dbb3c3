//! What a disk is made of: a base image, optionally with an overlay laid
//! over it. The same shape is booted (`Rootfs::cow`) and flattened
//! (`flatten`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::{
    BlockStore, CowDisk, Disk, Image, ImageFormat, OverlayOptions, Qcow2Image, Qcow2Overlay,
    RawImage, RootfsError, StoreContext,
};

/// A base image with a [`BlockStore`]'s blocks laid over it; built by
/// [`crate::Rootfs::compose`].
#[derive(Clone)]
pub struct Composed {
    pub(crate) base: Image,
    pub(crate) overlay: Arc<dyn BlockStore>,
}

impl std::fmt::Debug for Composed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Composed({} + block store)", self.base.name)
    }
}

impl Composed {
    /// The base image.
    pub fn base(&self) -> &Image {
        &self.base
    }

    /// The context the overlay store is called with.
    pub fn context(&self) -> StoreContext {
        StoreContext {
            base_name: self.base.name.clone(),
            base_sha256: self.base.sha256.clone(),
        }
    }
}

/// Something whose disk content can be read: an image, a composed image, or
/// a persistent overlay over its image.
#[derive(Clone, Debug)]
pub enum Source {
    /// A base image alone.
    Image(Image),
    /// A base image plus a block store's blocks.
    Composed(Composed),
    /// A persistent qcow2 overlay file over its base image.
    Persistent {
        /// The base image.
        image: Image,
        /// The overlay file (it must exist).
        path: PathBuf,
    },
}

impl From<Image> for Source {
    fn from(image: Image) -> Self {
        Source::Image(image)
    }
}

impl From<Composed> for Source {
    fn from(c: Composed) -> Self {
        Source::Composed(c)
    }
}

impl Source {
    /// The base image.
    pub fn base(&self) -> &Image {
        match self {
            Source::Image(image) | Source::Persistent { image, .. } => image,
            Source::Composed(c) => &c.base,
        }
    }

    /// Verifies and opens the base image alone.
    pub(crate) fn open_base(image: &Image) -> Result<Box<dyn Disk>, RootfsError> {
        image.verify()?;
        Ok(match image.format {
            ImageFormat::Raw => {
                Box::new(
                    RawImage::open(&image.path).map_err(|source| RootfsError::Io {
                        what: format!("opening image {}", image.path.display()),
                        source,
                    })?,
                )
            }
            ImageFormat::Qcow2 => Box::new(Qcow2Image::open(&image.path)?),
        })
    }

    /// Opens the content for reading, the base verified first (a block
    /// store is called on `rt`: call this off the runtime's own threads,
    /// e.g. in `spawn_blocking`). A persistent overlay is locked while open.
    pub fn open_read(&self, rt: &tokio::runtime::Handle) -> Result<Box<dyn Disk>, RootfsError> {
        let base = Self::open_base(self.base())?;
        Ok(match self {
            Source::Image(_) => base,
            Source::Composed(c) => {
                let disk = CowDisk::open(base, c.overlay.clone(), c.context(), rt.clone(), 0, None)
                    .map_err(|source| RootfsError::Io {
                        what: "opening the block store".into(),
                        source,
                    })?;
                Box::new(disk)
            }
            Source::Persistent { image, path } => {
                if !path.exists() {
                    return Err(RootfsError::Io {
                        what: format!("reading the persistent overlay {}", path.display()),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
                Box::new(Qcow2Overlay::open(
                    path,
                    base,
                    image,
                    OverlayOptions::default(),
                )?)
            }
        })
    }
}

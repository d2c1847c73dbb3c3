//! From a source and a selection to one verified image: which manifest,
//! which platform, which layers.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::schema::{self, Config, Descriptor, DockerEntry, Index, Manifest};
use super::store::Store;
use super::{Compression, Digest, Layer, OciError, Resolved, RunDefaults, SourceFormat};

/// Largest index or manifest read.
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image configuration read.
const MAX_CONFIG: u64 = 8 << 20;
/// Most layers an image may have.
const MAX_LAYERS: usize = 256;
/// Deepest nesting of indexes followed.
const MAX_DEPTH: usize = 4;

/// An OS/architecture pair such as `linux/amd64` (an optional variant:
/// `linux/arm/v7`). Architectures are spelled as OCI does: `amd64`,
/// `arm64` (`x86_64` and `aarch64` are accepted as aliases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... if given.
    pub variant: Option<String>,
}

fn canonical_arch(a: &str) -> String {
    match a {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        a => a.to_string(),
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            OciError::Malformed(format!(
                "platform {s:?} is not os/arch[/variant], e.g. linux/amd64"
            ))
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: canonical_arch(arch),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(bad()),
        }
    }

    /// The platform of guests this build boots: `linux/amd64` on x86_64,
    /// `linux/arm64` on aarch64.
    pub fn native() -> Self {
        Self {
            os: "linux".into(),
            architecture: canonical_arch(std::env::consts::ARCH),
            variant: None,
        }
    }

    /// The architecture as the guest kernel names it (`x86_64`,
    /// `aarch64`).
    pub fn kernel_arch(&self) -> &str {
        match self.architecture.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            a => a,
        }
    }

    fn from_json(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_string(),
            architecture: canonical_arch(arch),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// Whether an image built for `self` runs where `wanted` is asked for:
    /// same OS and architecture; a variant must match only when both name
    /// one (arm64's `v8` is its only variant).
    fn satisfies(&self, wanted: &Platform) -> bool {
        let variant_ok = match (&self.variant, &wanted.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.os == wanted.os && self.architecture == wanted.architecture && variant_ok
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which image of a source to import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The only one there is (an error when there are several).
    Only,
    /// By name: a `ref.name` annotation (`3.19`, `myapp:v1`) or a Docker
    /// repository tag (`alpine:3.19`, `docker.io/library/alpine:3.19`).
    Name(String),
    /// By the digest of a manifest or an index in the source, or (for a
    /// legacy `docker save` archive) of the config.
    Digest(Digest),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Only => write!(f, "the only image"),
            Selector::Name(n) => write!(f, "name {n:?}"),
            Selector::Digest(d) => write!(f, "digest {d}"),
        }
    }
}

/// Whether a name the source gives (`given`) is the one asked for, up to
/// Docker's defaults (`docker.io/library/`, `:latest`).
fn name_matches(wanted: &str, given: &str) -> bool {
    fn full(n: &str) -> String {
        let (repo, tag) = match n.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ => (n.to_string(), "latest".to_string()),
        };
        let repo = match repo.split_once('/') {
            None => format!("docker.io/library/{repo}"),
            Some((host, _)) if host.contains('.') || host.contains(':') || host == "localhost" => {
                repo
            }
            Some(_) => format!("docker.io/{repo}"),
        };
        format!("{repo}:{tag}")
    }
    wanted == given || full(wanted) == full(given)
}

/// Parses a JSON document, naming it in the error.
fn parse<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Malformed(format!("{what}: {e}")))
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads the blob a descriptor names and checks its size and digest.
fn read_blob(store: &Store, desc: &Descriptor, what: &str, max: u64) -> Result<Vec<u8>, OciError> {
    let digest = Digest::parse(&desc.digest)?;
    let loc = store.locate(&blob_path(&digest))?;
    let bytes = loc.read_small(what, max)?;
    check(what, &bytes, &digest, Some(desc.size))?;
    Ok(bytes)
}

fn check(what: &str, bytes: &[u8], expected: &Digest, size: Option<i64>) -> Result<(), OciError> {
    let actual = Digest::of(bytes);
    let size_ok = size.is_none_or(|s| s == bytes.len() as i64);
    if &actual != expected || !size_ok {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual,
            expected_size: size.map(|s| s.max(0) as u64),
            actual_size: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Resolves the image `selector` names for `platform` in the source at
/// `path` (an OCI layout directory, a tar of one, or a `docker save`
/// archive), checking every document it reads against its digest. Layer
/// blobs are located, not read: [`super::copy_verified`] checks them in the
/// pass that copies them.
pub fn resolve(
    path: &Path,
    selector: &Selector,
    platform: &Platform,
) -> Result<Resolved, OciError> {
    let store = Store::open(path)?;
    if store.has("index.json") {
        resolve_layout(&store, selector, platform)
    } else if store.has("manifest.json") {
        resolve_docker(&store, selector, platform)
    } else {
        Err(OciError::Malformed(format!(
            "{} has neither index.json (an OCI image layout) nor manifest.json (a docker save archive)",
            path.display()
        )))
    }
}

/// A manifest found in an index, with what selected it.
struct Candidate {
    desc: Descriptor,
    names: Vec<String>,
}

fn ref_names(desc: &Descriptor) -> Vec<String> {
    let Some(a) = &desc.annotations else {
        return Vec::new();
    };
    [
        "org.opencontainers.image.ref.name",
        "io.containerd.image.name",
    ]
    .iter()
    .filter_map(|k| a.get(*k).cloned())
    .collect()
}

fn resolve_layout(
    store: &Store,
    selector: &Selector,
    platform: &Platform,
) -> Result<Resolved, OciError> {
    if let Ok(loc) = store.locate("oci-layout") {
        let layout: schema::LayoutFile = parse("oci-layout", &loc.read_small("oci-layout", 4096)?)?;
        if !layout.version.starts_with("1.") {
            return Err(OciError::Unsupported(format!(
                "OCI image layout version {}",
                layout.version
            )));
        }
    }
    let index_bytes = store
        .locate("index.json")?
        .read_small("index.json", MAX_MANIFEST)?;
    let index: Index = parse("index.json", &index_bytes)?;
    check_header(
        "index.json",
        index.media_type.as_deref(),
        schema::INDEX_TYPES,
        "an image index",
        index.schema_version,
    )?;
    // Every manifest reachable from the top-level index, with the names
    // and digests (of it or an index above it) that select it.
    let mut found: Vec<(Candidate, Vec<Digest>)> = Vec::new();
    let mut stack: Vec<(Descriptor, Vec<String>, Vec<Digest>, usize)> = index
        .manifests
        .iter()
        .map(|d| (d.clone(), ref_names(d), Vec::new(), 0))
        .collect();
    stack.reverse();
    while let Some((desc, names, mut via, depth)) = stack.pop() {
        let digest = Digest::parse(&desc.digest)?;
        via.push(digest.clone());
        if schema::INDEX_TYPES.contains(&desc.media_type.as_str()) {
            if depth >= MAX_DEPTH {
                return Err(OciError::Malformed(format!(
                    "indexes nested more than {MAX_DEPTH} deep"
                )));
            }
            let bytes = read_blob(store, &desc, &format!("index {digest}"), MAX_MANIFEST)?;
            let nested: Index = parse(&format!("index {digest}"), &bytes)?;
            for d in nested.manifests.iter().rev() {
                let mut n = names.clone();
                n.extend(ref_names(d));
                stack.push((d.clone(), n, via.clone(), depth + 1));
            }
        } else if schema::MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
            found.push((Candidate { desc, names }, via));
        }
        // Anything else (attestations, signatures, artifacts) is skipped.
    }
    let wanted = selector.to_string();
    let selected: Vec<&(Candidate, Vec<Digest>)> = found
        .iter()
        .filter(|(c, via)| match selector {
            Selector::Only => true,
            Selector::Name(n) => c.names.iter().any(|g| name_matches(n, g)),
            Selector::Digest(d) => via.contains(d),
        })
        .collect();
    if selected.is_empty() {
        let available = found
            .iter()
            .map(|(c, _)| describe(c))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(OciError::NotFound {
            wanted,
            available: if available.is_empty() {
                "no image manifests".into()
            } else {
                available
            },
        });
    }
    // Platform: from the descriptor when it says, else from the config.
    let mut matching = Vec::new();
    let mut seen = Vec::new();
    for (c, _) in &selected {
        let built = match &c.desc.platform {
            Some(p) => Platform::from_json(&p.os, &p.architecture, p.variant.as_deref()),
            None => load_manifest(store, &c.desc)?.2,
        };
        if built.satisfies(platform) {
            matching.push(c);
        } else {
            seen.push(built.to_string());
        }
    }
    match matching.as_slice() {
        [] => Err(OciError::NotFound {
            wanted: format!("{wanted} for platform {platform}"),
            available: format!("platforms {}", seen.join(", ")),
        }),
        [one] => {
            let (manifest_digest, manifest, built, config) = {
                let (d, m, p) = load_manifest(store, &one.desc)?;
                let cfg = read_config(store, &m.config)?;
                (d, m, p, cfg)
            };
            let layers = layout_layers(store, &manifest, &config)?;
            let mut names = one.names.clone();
            names.dedup();
            Ok(Resolved {
                format: SourceFormat::OciLayout,
                digest: manifest_digest,
                config_digest: Digest::parse(&manifest.config.digest)?,
                platform: built,
                names,
                layers,
                defaults: defaults(&config),
            })
        }
        many => Err(OciError::Ambiguous {
            wanted,
            available: many
                .iter()
                .map(|c| describe(c))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn describe(c: &Candidate) -> String {
    let plat = c
        .desc
        .platform
        .as_ref()
        .map(|p| {
            format!(
                " {}",
                Platform::from_json(&p.os, &p.architecture, p.variant.as_deref())
            )
        })
        .unwrap_or_default();
    match c.names.first() {
        Some(n) => format!("{n} ({}{plat})", c.desc.digest),
        None => format!("{}{plat}", c.desc.digest),
    }
}

/// An index's or manifest's own media type (optional, but one of
/// `allowed` when present) and schema version (2).
fn check_header(
    what: &str,
    media_type: Option<&str>,
    allowed: &[&str],
    kind: &str,
    schema_version: i64,
) -> Result<(), OciError> {
    if let Some(t) = media_type.filter(|t| !allowed.contains(t)) {
        return Err(OciError::Malformed(format!(
            "{what} has media type {t:?}, not {kind}"
        )));
    }
    if schema_version != 2 {
        return Err(OciError::Unsupported(format!(
            "{what}: schemaVersion {schema_version}"
        )));
    }
    Ok(())
}

/// A manifest, verified, and the platform its config names.
fn load_manifest(
    store: &Store,
    desc: &Descriptor,
) -> Result<(Digest, Manifest, Platform), OciError> {
    let digest = Digest::parse(&desc.digest)?;
    let what = format!("manifest {digest}");
    let bytes = read_blob(store, desc, &what, MAX_MANIFEST)?;
    let m: Manifest = parse(&what, &bytes)?;
    check_header(
        &what,
        m.media_type.as_deref(),
        schema::MANIFEST_TYPES,
        "an image manifest",
        m.schema_version,
    )?;
    let config = read_config(store, &m.config)?;
    let p = Platform::from_json(&config.os, &config.architecture, config.variant.as_deref());
    Ok((digest, m, p))
}

fn read_config(store: &Store, desc: &Descriptor) -> Result<Config, OciError> {
    let what = format!("image config {}", desc.digest);
    let bytes = read_blob(store, desc, &what, MAX_CONFIG)?;
    let c: Config = parse(&what, &bytes)?;
    if c.rootfs.kind != "layers" {
        return Err(OciError::Unsupported(format!(
            "{what}: rootfs type {:?}",
            c.rootfs.kind
        )));
    }
    Ok(c)
}

fn diff_ids(config: &Config, layers: usize) -> Result<Vec<Digest>, OciError> {
    if layers > MAX_LAYERS {
        return Err(OciError::Unsupported(format!(
            "{layers} layers (at most {MAX_LAYERS})"
        )));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(OciError::Malformed(format!(
            "the manifest lists {layers} layers but the config's rootfs has {} diff_ids",
            config.rootfs.diff_ids.len()
        )));
    }
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d))
        .collect()
}

fn layout_layers(store: &Store, m: &Manifest, config: &Config) -> Result<Vec<Layer>, OciError> {
    let diffs = diff_ids(config, m.layers.len())?;
    m.layers
        .iter()
        .zip(diffs)
        .map(|(d, diff_id)| {
            let compression = layer_compression(&d.media_type)?;
            let digest = Digest::parse(&d.digest)?;
            let location = store.locate(&blob_path(&digest))?;
            if d.size < 0 || location.size != d.size as u64 {
                return Err(OciError::Malformed(format!(
                    "layer {digest} is {} bytes, its descriptor says {}",
                    location.size, d.size
                )));
            }
            Ok(Layer {
                digest,
                diff_id,
                location,
                compression,
            })
        })
        .collect()
}

fn layer_compression(media_type: &str) -> Result<Compression, OciError> {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."))
        .ok_or_else(|| OciError::Unsupported(format!("layer media type {media_type:?}")))?;
    let base = base
        .strip_prefix("nondistributable.")
        .or_else(|| base.strip_prefix("foreign."))
        .unwrap_or(base);
    match base {
        "v1.tar" | "diff.tar" => Ok(Compression::None),
        "v1.tar+gzip" | "diff.tar.gzip" => Ok(Compression::Gzip),
        "v1.tar+zstd" | "diff.tar.zstd" => Ok(Compression::Zstd),
        _ => Err(OciError::Unsupported(format!(
            "layer media type {media_type:?}"
        ))),
    }
}

fn defaults(c: &Config) -> RunDefaults {
    let r = c.config.as_ref();
    let get = |f: fn(&schema::RunConfig) -> Option<Vec<String>>| r.and_then(f).unwrap_or_default();
    RunDefaults {
        env: get(|r| r.env.clone()),
        working_dir: r
            .and_then(|r| r.working_dir.clone())
            .filter(|s| !s.is_empty()),
        user: r.and_then(|r| r.user.clone()).filter(|s| !s.is_empty()),
        entrypoint: get(|r| r.entrypoint.clone()),
        cmd: get(|r| r.cmd.clone()),
    }
}

/// A name in a legacy archive that is a blob address, if it is one.
fn digest_in_name(name: &str) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

fn resolve_docker(
    store: &Store,
    selector: &Selector,
    platform: &Platform,
) -> Result<Resolved, OciError> {
    let bytes = store
        .locate("manifest.json")?
        .read_small("manifest.json", MAX_MANIFEST)?;
    let entries: Vec<DockerEntry> = parse("manifest.json", &bytes)?;
    let mut tagged = Vec::new();
    for e in &entries {
        let config_digest = digest_in_name(&e.config).ok_or_else(|| {
            OciError::Malformed(format!(
                "manifest.json: config {:?} is not named by its digest",
                e.config
            ))
        })?;
        tagged.push((e, config_digest));
    }
    let wanted = selector.to_string();
    let selected: Vec<_> = tagged
        .iter()
        .filter(|(e, d)| match selector {
            Selector::Only => true,
            Selector::Name(n) => e.repo_tags.iter().flatten().any(|t| name_matches(n, t)),
            Selector::Digest(w) => w == d,
        })
        .collect();
    let describe = |(e, d): &&(&DockerEntry, Digest)| match e.repo_tags.iter().flatten().next() {
        Some(t) => format!("{t} ({d})"),
        None => d.to_string(),
    };
    let (entry, config_digest) = match selected.as_slice() {
        [] => {
            return Err(OciError::NotFound {
                wanted,
                available: tagged
                    .iter()
                    .map(|t| describe(&t))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        [one] => *one,
        many => {
            return Err(OciError::Ambiguous {
                wanted,
                available: many.iter().map(describe).collect::<Vec<_>>().join(", "),
            })
        }
    };
    let what = format!("image config {config_digest}");
    let cbytes = store.locate(&entry.config)?.read_small(&what, MAX_CONFIG)?;
    check(&what, &cbytes, config_digest, None)?;
    let config: Config = parse(&what, &cbytes)?;
    let built = Platform::from_json(&config.os, &config.architecture, config.variant.as_deref());
    if !built.satisfies(platform) {
        return Err(OciError::NotFound {
            wanted: format!("{wanted} for platform {platform}"),
            available: format!("platforms {built}"),
        });
    }
    let diffs = diff_ids(&config, entry.layers.len())?;
    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(diffs) {
        let location = store.locate(name)?;
        let mut head = Vec::with_capacity(4);
        {
            use std::io::Read;
            location
                .open()?
                .take(4)
                .read_to_end(&mut head)
                .map_err(|e| OciError::io(format!("reading layer {name}"), e))?;
        }
        let compression = Compression::sniff(&head);
        // A blob-addressed layer is checked against its name; a legacy
        // `<id>/layer.tar` is an uncompressed tar whose digest is its
        // diff_id.
        let digest = match digest_in_name(name) {
            Some(d) => d,
            None if compression == Compression::None => diff_id.clone(),
            None => {
                return Err(OciError::Unsupported(format!(
                    "layer {name} is compressed but not named by its digest, so it cannot be verified before unpacking"
                )))
            }
        };
        layers.push(Layer {
            digest,
            diff_id,
            location,
            compression,
        });
    }
    Ok(Resolved {
        format: SourceFormat::DockerArchive,
        digest: config_digest.clone(),
        config_digest: config_digest.clone(),
        platform: built,
        names: entry.repo_tags.clone().unwrap_or_default(),
        layers,
        defaults: defaults(&config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_match_up_to_defaults() {
        assert!(name_matches("alpine", "docker.io/library/alpine:latest"));
        assert!(name_matches("alpine:3.19", "docker.io/library/alpine:3.19"));
        assert!(name_matches("me/app:v1", "docker.io/me/app:v1"));
        assert!(name_matches(
            "localhost:5000/app",
            "localhost:5000/app:latest"
        ));
        assert!(!name_matches("alpine:3.19", "alpine:3.20"));
        assert!(!name_matches("app", "other/app"));
    }

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("linux/x86_64").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/").is_err());
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.satisfies(&Platform::parse("linux/arm64").unwrap()));
        assert!(!arm.satisfies(&p));
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert!(layer_compression("application/octet-stream").is_err());
    }
}

//! Resolving a process's user the way OCI runtimes read an image's `User`:
//! `name`, `uid`, `name:group`, `uid:gid` (and the mixed forms), looked up
//! in the guest's own `/etc/passwd` and `/etc/group`. Files are parsed
//! directly: the static agent cannot rely on NSS.

use std::io;

/// Who a process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's memberships in `/etc/group` when
    /// no group was named, else none.
    pub groups: Vec<u32>,
    /// The passwd entry's home directory, or `/` for an unknown numeric uid.
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// The colon-separated fields of each line with at least `fields` of
/// them, comments skipped.
fn records(text: &str, fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(move |f| f.len() >= fields)
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    records(text, 7).filter_map(|f| {
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    records(text, 4).filter_map(|f| {
        Some(Group {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3],
        })
    })
}

fn not_found(what: &str, spec: &str, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("user {spec:?}: no {what} of that name in {file}"),
    )
}

/// Resolves `spec` against the text of `/etc/passwd` and `/etc/group`
/// (either may be empty when the file is missing). Numeric ids need no
/// entry; names do.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> io::Result<Identity> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("user {spec:?}: expected user, uid, user:group or uid:gid"),
        ));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| not_found("user", spec, "/etc/passwd"))?,
        ),
    };
    let uid = match &entry {
        Some(p) => p.uid,
        None => user.parse().unwrap_or(0),
    };
    let home = entry.as_ref().map_or("/", |p| p.home).to_string();
    let (gid, groups) = match grp {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => (gid, Vec::new()),
            Err(_) => {
                let found = group_entries(group)
                    .find(|e| e.name == g)
                    .ok_or_else(|| not_found("group", spec, "/etc/group"))?;
                (found.gid, Vec::new())
            }
        },
        None => {
            let gid = entry.as_ref().map_or(0, |p| p.gid);
            let mut groups = vec![gid];
            if let Some(p) = &entry {
                for e in group_entries(group) {
                    if e.members.split(',').any(|m| m == p.name) && !groups.contains(&e.gid) {
                        groups.push(e.gid);
                    }
                }
            }
            (gid, groups)
        }
    };
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

/// Resolves `spec` against the guest's files.
pub fn lookup(spec: &str) -> io::Result<Identity> {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    resolve(spec, &read("/etc/passwd"), &read("/etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\nwheel:x:10:root,app\ndocker:x:999:app\n";

    #[test]
    fn names_and_ids_resolve_as_oci_runtimes_do() {
        let app = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1001));
        assert_eq!(app.groups, vec![1001, 10, 999]);
        assert_eq!(app.home, "/home/app");
        // A known uid takes its entry's group and home.
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), app);
        // An unknown numeric uid needs no entry.
        let n = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 0, "/"));
        // A named group replaces the primary one and drops memberships.
        let g = resolve("app:docker", PASSWD, GROUP).unwrap();
        assert_eq!((g.uid, g.gid, g.groups.len()), (1000, 999, 0));
        let g = resolve("4242:77", "", "").unwrap();
        assert_eq!((g.uid, g.gid), (4242, 77));
    }

    #[test]
    fn unknown_names_and_malformed_specs_are_errors() {
        for spec in ["nobody", "app:nogroup", "", ":1", "app:", "root:x:y"] {
            let e = resolve(spec, PASSWD, GROUP).unwrap_err();
            assert!(e.to_string().contains("user"), "{spec}: {e}");
        }
    }
}

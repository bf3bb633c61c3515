//! User names from uids, for the `user` fields of records and node events: the one lookup
//! every writer shares (the SPANK plugin, healthd and the gates, the `sgpu` command, acctd).

use nix::unistd::{Uid, User};

/// The login name of `uid` in this host's passwd database (NSS), `None` when it has none or
/// the lookup fails.
pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_an_unused_uid_has_no_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
    }
}

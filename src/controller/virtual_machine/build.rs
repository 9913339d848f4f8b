//! Pure builders: the vendor [`ServerSpec`] for a VM, the names derived from the VM's name, and the
//! connection Secret's data (with an `.rdp` file for Windows).

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::cloud::{self, Server, ServerSpec};
use crate::controller::runtime::names::{self, MAX_HOSTNAME, MAX_OBJECT_NAME};
use crate::crd::VirtualMachine;
use crate::crd::virtual_machine::OperatingSystem;

/// Name of a VM's connection Secret: `<name>-connection`, shortened with a hash when that would exceed
/// the 253 characters Kubernetes allows.
pub fn connection_secret_name(vm: &VirtualMachine) -> String {
    names::fit(&vm.name_any(), "-connection", MAX_OBJECT_NAME)
}

/// The vendor server's name: `<vm name>-<first 8 of the UID>`, a valid hostname of at most 63
/// characters (dots become dashes; long names are shortened with a hash).
pub fn server_name(vm: &VirtualMachine, uid: &str) -> String {
    let base = vm.name_any().replace('.', "-");
    names::fit(
        &base,
        &format!("-{}", &uid[..8.min(uid.len())]),
        MAX_HOSTNAME,
    )
}

/// The vendor create request for a VM. `user_data` and `root_password` come from Secrets the caller read.
pub fn server_spec(
    vm: &VirtualMachine,
    uid: &str,
    user_data: Option<String>,
    root_password: Option<String>,
) -> ServerSpec {
    let mut tags = vec![cloud::uid_tag(uid)];
    tags.extend(vm.spec.tags.iter().cloned());
    ServerSpec {
        name: server_name(vm, uid),
        region: vm.spec.region.clone(),
        size: vm.spec.size.clone(),
        image: vm.spec.image.clone(),
        ssh_keys: vm.spec.ssh_keys.clone(),
        user_data,
        tags,
        backups: vm.spec.backups,
        ipv6: vm.spec.ipv6,
        root_password,
        options: cloud::ServerOptions {
            vpc_id: vm.spec.vpc_id.clone(),
            subnet_id: vm.spec.subnet_id.clone(),
            firewall_id: vm.spec.firewall_id.clone(),
            monitoring: vm.spec.monitoring,
            stack_script: vm
                .spec
                .stack_script
                .as_ref()
                .map(|s| (s.id, serde_json::json!({}))),
        },
    }
}

/// `Err(why)` when user data is larger than the vendor accepts (`limit` bytes, unencoded).
pub fn check_user_data(data: &str, limit: Option<usize>, vendor: &str) -> Result<(), String> {
    match limit {
        Some(max) if data.len() > max => Err(format!(
            "{} bytes of user data; {vendor} accepts at most {max} bytes",
            data.len()
        )),
        _ => Ok(()),
    }
}

/// The `.rdp` file for a Windows VM: full address, username, and sensible display/redirection defaults.
pub fn rdp_file(address: &str, username: &str) -> String {
    [
        format!("full address:s:{address}"),
        format!("username:s:{username}"),
        "prompt for credentials:i:1".into(),
        "administrative session:i:1".into(),
        "screen mode id:i:2".into(),
        "use multimon:i:0".into(),
        "desktopwidth:i:1920".into(),
        "desktopheight:i:1080".into(),
        "session bpp:i:32".into(),
        "smart sizing:i:1".into(),
        "dynamic resolution:i:1".into(),
        "compression:i:1".into(),
        "redirectclipboard:i:1".into(),
        "redirectprinters:i:0".into(),
        "redirectdrives:i:0".into(),
        "redirectsmartcards:i:0".into(),
        "audiomode:i:0".into(),
        "autoreconnection enabled:i:1".into(),
        "authentication level:i:2".into(),
        "negotiate security layer:i:1".into(),
        String::new(),
    ]
    .join("\r\n")
}

/// The connection Secret's data for a VM and its server.
pub fn connection_data(
    vm: &VirtualMachine,
    server: Option<&Server>,
    password: Option<&str>,
) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let windows = vm.spec.os == OperatingSystem::Windows;
    let username = if windows { "Administrator" } else { "root" };
    d.insert("username".into(), username.into());
    if let Some(p) = password {
        d.insert("password".into(), p.into());
    }
    if let Some(s) = server {
        if let Some(ip) = &s.public_ipv4 {
            d.insert("ipv4".into(), ip.clone());
        }
        if let Some(ip) = &s.public_ipv6 {
            d.insert("ipv6".into(), ip.clone());
        }
        if let Some(ip) = &s.private_ipv4 {
            d.insert("privateIPv4".into(), ip.clone());
        }
        let host = s.public_ipv4.clone().or_else(|| s.public_ipv6.clone());
        if windows && let Some(h) = host {
            d.insert("connection.rdp".into(), rdp_file(&h, username));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ServerState;

    #[test]
    fn user_data_over_the_vendor_limit_is_refused_with_the_limit() {
        let limit = Some(64 * 1024);
        assert!(check_user_data(&"x".repeat(64 * 1024), limit, "digitalocean").is_ok());
        let err = check_user_data(&"x".repeat(1 << 20), limit, "digitalocean").unwrap_err();
        assert!(err.contains("1048576 bytes"), "{err}");
        assert!(err.contains("at most 65536 bytes"), "{err}");
        assert!(check_user_data(&"x".repeat(1 << 20), None, "contabo").is_ok());
    }

    pub(crate) fn vm(name: &str, extra: serde_json::Value) -> VirtualMachine {
        let mut spec = serde_json::json!({
            "providerConfigRef": {"name": "p"}, "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "n", "uid": "0123456789abcdef"},
            "spec": spec
        }))
        .unwrap()
    }

    fn server() -> Server {
        Server {
            id: "1".into(),
            name: "n".into(),
            state: ServerState::Running,
            size: "s".into(),
            region: "fra1".into(),
            image: None,
            public_ipv4: Some("203.0.113.5".into()),
            public_ipv6: None,
            private_ipv4: None,
            tags: vec![],
            busy: false,
            price: None,
            deletion_scheduled: false,
            initial_password: None,
            backups: None,
        }
    }

    #[test]
    fn server_spec_table() {
        let uid = "0123456789abcdef";
        let cases: Vec<(&str, VirtualMachine, &str, Vec<&str>)> = vec![
            (
                "plain",
                vm("web", serde_json::json!({})),
                "web-01234567",
                vec!["quartermaster-uid-0123456789abcdef"],
            ),
            (
                "user tags after the ownership tag",
                vm("db", serde_json::json!({"tags": ["team:a", "db"]})),
                "db-01234567",
                vec!["quartermaster-uid-0123456789abcdef", "team:a", "db"],
            ),
            (
                "dots are not hostname-safe at every vendor",
                vm("a.b", serde_json::json!({})),
                "a-b-01234567",
                vec!["quartermaster-uid-0123456789abcdef"],
            ),
        ];
        for (name, vm, want_name, want_tags) in cases {
            let s = server_spec(&vm, uid, Some("#cloud-config".into()), None);
            assert_eq!(s.name, want_name, "{name}");
            assert_eq!(s.tags, want_tags, "{name}");
            assert_eq!(s.user_data.as_deref(), Some("#cloud-config"));
            assert_eq!(
                (s.region.as_str(), s.size.as_str()),
                ("fra1", "s-1vcpu-1gb")
            );
        }
        let long = vm(&"v".repeat(248), serde_json::json!({}));
        let s = server_spec(&long, uid, None, Some("pw".into()));
        assert!(
            s.name.len() <= 63 && s.name.ends_with("-01234567"),
            "{}",
            s.name
        );
        assert_eq!(s.root_password.as_deref(), Some("pw"));
    }

    #[test]
    fn long_vm_names_get_a_valid_connection_secret_name() {
        let long = vm(&"v".repeat(248), serde_json::json!({}));
        let n = connection_secret_name(&long);
        assert!(n.len() <= 253 && n.ends_with("-connection"), "{n}");
        assert_eq!(
            connection_secret_name(&vm("web", serde_json::json!({}))),
            "web-connection"
        );
    }

    #[test]
    fn windows_gets_an_rdp_file() {
        let mut vm = vm("w", serde_json::json!({"os": "windows"}));
        let d = connection_data(&vm, Some(&server()), Some("S3cret-Pass"));
        assert_eq!(d["username"], "Administrator");
        let rdp = &d["connection.rdp"];
        assert!(rdp.contains("full address:s:203.0.113.5\r\n"), "{rdp}");
        assert!(rdp.contains("username:s:Administrator\r\n"));
        assert!(
            !rdp.contains("S3cret-Pass"),
            "the password never goes into the .rdp file"
        );
        vm.spec.os = OperatingSystem::Linux;
        let d = connection_data(&vm, Some(&server()), None);
        assert_eq!(d["username"], "root");
        assert!(!d.contains_key("connection.rdp"));
        assert_eq!(d["ipv4"], "203.0.113.5");
    }
}

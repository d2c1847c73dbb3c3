//! Userspace network behind virtio-net: a smoltcp stack, NAT/relay to host
//! sockets, DNS, HTTP/HTTPS interception with a per-sandbox CA, and the
//! default-deny egress policy engine.
//!
//! Not implemented yet: guests have no network interface today.

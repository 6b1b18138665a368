mod common;
use common::*;
use std::time::Duration;
use uplinkd::config::Family;
use uplinkd::lab::{StreamSpec, Uplink};

fn trial(kind: &str, noise: bool, n: usize) {
    let lab = lab();
    let a = settled(&lab, "");
    let _noise = if noise {
        Some(lab.noise(Duration::from_millis(150)).unwrap())
    } else {
        None
    };
    let mut gaps = Vec::new();
    for _ in 0..n {
        // wait settled on primary
        a.wait_for("primary", Duration::from_secs(60), |s| {
            s.active.ipv4.as_deref() == Some("primary")
                && s.uplinks[0].state == uplinkd::status::UplinkState::Healthy
        });
        std::thread::sleep(Duration::from_millis(300));
        let st = lab.udp_stream(&StreamSpec::v4()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        match kind {
            "carrier" => lab.carrier_down(Uplink::Primary).unwrap(),
            "gateway" => lab.gateway_dead(Uplink::Primary).unwrap(),
            _ => lab.upstream_dead(Uplink::Primary).unwrap(),
        }
        wait_route(
            &lab,
            &a,
            Family::V4,
            Uplink::Secondary,
            Duration::from_secs(5),
        );
        std::thread::sleep(Duration::from_millis(300));
        let r = st.stop();
        gaps.push(r.longest_gap.as_secs_f64() * 1000.0);
        println!(
            "{kind} noise={noise}: gap {:.2} ms lost {} gaps {:?}",
            r.longest_gap.as_secs_f64() * 1000.0,
            r.lost(),
            &r.gaps[..r.gaps.len().min(5)]
        );
        match kind {
            "carrier" => lab.carrier_up(Uplink::Primary).unwrap(),
            "gateway" => lab.gateway_alive(Uplink::Primary).unwrap(),
            _ => lab.upstream_alive(Uplink::Primary).unwrap(),
        }
        // restart daemon is slow; instead drain? failback is 30s: use override
    }
    println!("{kind} noise={noise}: {gaps:?}");
}

#[test]
fn m_carrier() {
    trial("carrier", false, 1)
}
#[test]
fn m_carrier_noise() {
    trial("carrier", true, 1)
}
#[test]
fn m_gateway() {
    trial("gateway", false, 1)
}
#[test]
fn m_upstream() {
    trial("upstream", false, 1)
}

fn cpu_of(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
#[test]
fn m_idle_cpu() {
    idle("")
}
#[test]
fn m_idle_cpu_noprobe() {
    idle("[probe]\ngateway_interval = \"10s\"\ngateway_dead_after = \"20s\"\ntransit_interval = \"10s\"\n")
}
#[test]
fn m_idle_cpu_gw40() {
    idle("[probe]\ngateway_interval = \"40ms\"\n")
}
#[test]
fn m_idle_cpu_t5() {
    idle("[probe]\ncarrier_interval = \"5ms\"\n")
}
#[test]
fn m_idle_cpu_poll5() {
    idle("[probe]\ncarrier_interval = \"5ms\"\n")
}
#[test]
fn m_idle_cpu_gw50() {
    idle("[probe]\ncarrier_interval = \"1s\"\ngateway_interval = \"50ms\"\n")
}
fn idle(o: &str) {
    let lab = lab();
    let a = settled(&lab, o);
    let pid = a.child.as_ref().unwrap().pid();
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_of(pid);
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let c1 = cpu_of(pid);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{o:?} idle cpu {:.2}% of a core; {rss}",
        (c1 - c0) / t0.elapsed().as_secs_f64() * 100.0
    );
}

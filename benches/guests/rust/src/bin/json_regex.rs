//! A workflow over documents, in Rust with serde_json and regex: it
//! generates a batch of JSON order records, parses each with serde_json,
//! validates and extracts fields with regular expressions, and aggregates;
//! a possible suspension after every record.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;
use wasnap_bench_guests::checkpoint;

const RECORDS: u32 = 20_000;

/// A deterministic order record as JSON text.
fn record(i: u32) -> String {
    let x = i.wrapping_mul(2_654_435_761);
    format!(
        r#"{{"id":{i},"customer":"cust-{:05}","email":"user{}@{}.example","items":[{}],"note":"ship by 2026-{:02}-{:02}, ref #{:x}"}}"#,
        x % 5000,
        x % 977,
        ["north", "south", "east", "west"][(x % 4) as usize],
        (0..1 + x % 4)
            .map(|k| format!(r#"{{"sku":"SKU-{}","qty":{},"price":{}.{:02}}}"#, (x >> k) % 900, 1 + k, x % 300, k * 7))
            .collect::<Vec<_>>()
            .join(","),
        1 + x % 12,
        1 + x % 28,
        x
    )
}

fn main() {
    let email = Regex::new(r"^[a-z0-9]+@(north|south|east|west)\.example$").unwrap();
    let date = Regex::new(r"(\d{4})-(\d{2})-(\d{2})").unwrap();
    let sku = Regex::new(r"^SKU-(\d+)$").unwrap();
    let mut revenue_by_region: BTreeMap<String, f64> = BTreeMap::new();
    let mut orders_by_month = [0u32; 13];
    let mut sku_sum = 0u64;
    for i in 0..RECORDS {
        let doc: Value = serde_json::from_str(&record(i)).unwrap();
        let address = doc["email"].as_str().unwrap();
        let region = email.captures(address).unwrap()[1].to_string();
        let month: usize = date.captures(doc["note"].as_str().unwrap()).unwrap()[2]
            .parse()
            .unwrap();
        orders_by_month[month] += 1;
        let mut total = 0.0;
        for item in doc["items"].as_array().unwrap() {
            let code = &sku.captures(item["sku"].as_str().unwrap()).unwrap()[1];
            sku_sum += code.parse::<u64>().unwrap();
            total += item["qty"].as_f64().unwrap() * item["price"].as_f64().unwrap();
        }
        *revenue_by_region.entry(region).or_default() += total;
        if checkpoint(&[i, orders_by_month[month]]) {
            break;
        }
    }
    for (region, revenue) in &revenue_by_region {
        println!("{region}: {revenue:.2}");
    }
    println!("orders by month {:?}", &orders_by_month[1..]);
    println!("sku sum {sku_sum}");
}

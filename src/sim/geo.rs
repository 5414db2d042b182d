//! Where the capitals are (`config/capitals.csv`, built in) and the WAN
//! delay that their great-circle distance implies.

use std::time::Duration;

use crate::label::Nation;

const CAPITALS_CSV: &str = include_str!("../../config/capitals.csv");

/// Mean Earth radius, km.
const EARTH_RADIUS_KM: f64 = 6371.0;
/// Light in fibre covers about 200 km per millisecond.
const FIBRE_KM_PER_MS: f64 = 200.0;
/// Real routes are longer than the great circle.
const ROUTING_FACTOR: f64 = 1.5;

/// A capital: its nation, name and coordinates in degrees.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Capital {
    /// The nation.
    pub nation: Nation,
    /// The city.
    pub name: String,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
}

/// Every capital the built-in table knows.
pub fn capitals() -> Vec<Capital> {
    CAPITALS_CSV
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            let nation = Nation::parse(fields.next()?.trim())?;
            let name = fields.next()?.trim().to_owned();
            let lat = fields.next()?.trim().parse().ok()?;
            let lon = fields.next()?.trim().parse().ok()?;
            Some(Capital {
                nation,
                name,
                lat,
                lon,
            })
        })
        .collect()
}

/// The capital of `nation`, if the table has it.
pub fn capital(nation: Nation) -> Option<Capital> {
    capitals().into_iter().find(|c| c.nation == nation)
}

/// Great-circle distance between two points, km (haversine).
pub fn distance_km(a: &Capital, b: &Capital) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

/// The default one-way delay of a link between two nations' capitals:
/// 1 ms per 200 km of great circle, times 1.5 for the route.
pub fn path_delay(a: Nation, b: Nation) -> Option<Duration> {
    let km = distance_km(&capital(a)?, &capital(b)?);
    Some(Duration::from_secs_f64(
        km / FIBRE_KM_PER_MS * ROUTING_FACTOR / 1000.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    #[test]
    fn every_sample_nation_has_a_capital() {
        assert_eq!(capitals().len(), 15);
    }

    #[test]
    fn london_paris_is_about_344_km_and_2_6_ms() {
        let km = distance_km(&capital(nation("GBR")).unwrap(), &capital(nation("FRA")).unwrap());
        assert!((km - 344.0).abs() < 5.0, "{km}");
        let delay = path_delay(nation("GBR"), nation("FRA")).unwrap();
        assert_eq!(delay.as_micros() / 100, 25, "{delay:?}");
    }

    #[test]
    fn washington_is_far_and_symmetric() {
        let there = path_delay(nation("GBR"), nation("USA")).unwrap();
        let back = path_delay(nation("USA"), nation("GBR")).unwrap();
        assert_eq!(there, back);
        assert!(
            there > Duration::from_millis(40) && there < Duration::from_millis(50),
            "{there:?}"
        );
    }
}

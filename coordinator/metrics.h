// Prometheus text exposition (format 0.0.4) of the coordinator's status, served at
// GET /metrics beside the JSON status: the same figures, for scraping and alerting.
//
//   std::string body = prometheus_text(status_json);   // the JSON that GET /status returns
#pragma once

#include <string>

namespace cohort::coordinator {

// Converts the status document (coordinator.cpp's live status: version, steps, peers, refusals,
// evals, ...) to metric families prefixed `cohort_`. Label values (peer names come from peers)
// are escaped as the format requires and capped in length. Throws cohort::Error on a document
// that is not JSON.
std::string prometheus_text(const std::string& status_json);

}  // namespace cohort::coordinator

// The round's web dashboard: one self-contained HTML page (coordinator/dashboard.html, no CDN,
// charts drawn as SVG by the page) compiled into the binary and served at `GET /`. The page
// polls `GET /status` and renders progress, curves per step, peers and credits, refusals.
//
//   if (path == "/") return HttpResponse{200, "text/html; charset=utf-8", std::string(dashboard_html())};
#pragma once

#include <string_view>

namespace cohort::coordinator {

std::string_view dashboard_html();

}  // namespace cohort::coordinator

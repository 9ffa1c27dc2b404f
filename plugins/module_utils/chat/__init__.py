# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chat requests to a running service, one file per concern.

- ``routing``: which service a request goes to (and the job_id / name / latest selector the service
  modules share);
- ``sampling``: the sampling values sent, their defaults, what each network_arch accepts;
- ``media``: images and videos (local files, http(s) URLs, data: URIs) and their MIME types;
- ``messages``: the message list and the JSON body of one request;
- ``sending``: the one send-and-retry loop, for a single request and for each request of a batch;
- ``saving``: answers written to files (videos from data: URIs, the JSON Lines of a batch);
- ``batch``: many requests at once, with bounded concurrency, results in input order, a summary;
- ``ask``: what one tao_inference_request task does with the above.
"""

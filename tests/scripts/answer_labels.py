"""Each generator's answer label, and the one BentoML would work out without it: run by
tests/served/test_workers.py."""

import service

for generator in (service.ImageGenerator, service.VideoGenerator):
    spec = generator.apis["generate"].output_spec

    class Unlabelled(spec):
        media_type = None

    print(generator.name, spec.media_type, Unlabelled.mime_type())

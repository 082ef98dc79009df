"""Nipype interface over the participant report: one HTML page per participant."""

from __future__ import annotations

import json
from pathlib import Path

from bids.layout import parse_file_entities
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _ReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True)
    subject = traits.Str(mandatory=True)
    session_outputs = traits.List(traits.Dict, mandatory=True, desc="the sinks' role -> path dicts")
    parameters = traits.Dict(desc="run configuration shown in the report")
    methods = traits.List(traits.Str, desc="the run's methods paragraphs, citing references as [n]")
    references = traits.List(traits.Str, desc="the numbered references the methods cite, in order")


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True)


class ParticipantReport(SimpleInterface):
    """Write ``OUTPUT_DIR/sub-X.html`` from the derivatives the sessions wrote."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from bids_rim.reports.boilerplate import Boilerplate
        from bids_rim.reports.participant import SessionReportInputs, write_participant_report

        sessions = []
        for outputs in self.inputs.session_outputs:
            table = Path(outputs["table"])
            sidecar = json.loads(table.with_suffix(".json").read_text())
            sessions.append(SessionReportInputs(
                session_label=parse_file_entities(str(table)).get("session"),
                qsm=outputs["qsm"],
                flair_on_qsm=outputs["flair_on_qsm"],
                brain_mask=outputs["brain_mask"],
                lesion_labels=outputs["lesion_labels"],
                lesion_table=table,
                warnings=tuple(sidecar.get("Warnings", [])),
            ))
        methods = Boilerplate(tuple(self.inputs.methods), tuple(self.inputs.references)) \
            if isdefined(self.inputs.methods) else None
        self._results["out_report"] = str(write_participant_report(
            Path(self.inputs.output_dir), self.inputs.subject, sessions, dict(self.inputs.parameters),
            methods=methods))
        return runtime
